"""Attention U-Net (Oktay et al. 2018) as used in the paper.

Encoder: `depth` levels of double 3x3 conv (BN, ReLU) with max-pool between.
Decoder: transposed-conv upsampling; each skip passes an additive attention
gate driven by the decoder feature before concatenation. Head: 1x1 conv, raw
logits (the loss/predictor applies sigmoid or softmax). An optional
average-pool stem (`ModelConfig.stem`) runs the network on a coarser grid than
its input and labels.
"""

from __future__ import annotations

import torch
from torch import nn

from hemoseg.models.config import ModelConfig


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class AttentionGate(nn.Module):
    """Weights a skip feature map by a [0,1] map computed from skip + gating signal."""

    def __init__(self, skip_ch: int, gate_ch: int, inter_ch: int):
        super().__init__()
        self.w_skip = nn.Sequential(nn.Conv2d(skip_ch, inter_ch, 1, bias=False), nn.BatchNorm2d(inter_ch))
        self.w_gate = nn.Sequential(nn.Conv2d(gate_ch, inter_ch, 1, bias=False), nn.BatchNorm2d(inter_ch))
        self.psi = nn.Sequential(nn.Conv2d(inter_ch, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(self.relu(self.w_skip(skip) + self.w_gate(gate)))


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, attention: bool):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.gate = AttentionGate(cout, cout, max(cout // 2, 1)) if attention else None
        self.conv = DoubleConv(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.gate is not None:
            skip = self.gate(skip, x)
        return self.conv(torch.cat([skip, x], dim=1))


class AttentionUNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        chans = [config.width * 2**i for i in range(config.depth)]
        self.stem = nn.AvgPool2d(config.stem) if config.stem > 1 else nn.Identity()
        self.encoders = nn.ModuleList(
            DoubleConv(cin, cout) for cin, cout in zip([config.in_channels] + chans[:-1], chans)
        )
        self.pool = nn.MaxPool2d(2)
        self.decoders = nn.ModuleList(
            UpBlock(chans[i + 1], chans[i], config.attention) for i in reversed(range(config.depth - 1))
        )
        self.head = nn.Conv2d(chans[0], config.out_channels, 1)
        # Decoder outputs run coarse to fine (chans[depth-2] ... chans[0]); the aux heads sit
        # on the `deep_supervision` levels just below the output (chans[1], chans[2], ...).
        n_aux = min(config.deep_supervision, config.depth - 2)
        self.aux_heads = nn.ModuleList(nn.Conv2d(chans[i], config.out_channels, 1) for i in range(1, n_aux + 1))

    @property
    def stride(self) -> int:
        """Input sides must be a multiple of this."""
        return self.config.stem * 2 ** (self.config.depth - 1)

    def forward(self, x: torch.Tensor):
        """(B, in, S, S) -> logits (B, out, S/stem, S/stem); in training with deep
        supervision, a list: those logits, then each aux head's (2x, 4x, ... coarser)."""
        x = self.stem(x)
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        levels = []
        for dec in self.decoders:
            x = dec(x, skips.pop())
            levels.append(x)
        out = self.head(x)
        if not (self.training and len(self.aux_heads)):
            return out
        return [out] + [h(f) for h, f in zip(self.aux_heads, reversed(levels[:-1]))]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(config: ModelConfig) -> AttentionUNet:
    return AttentionUNet(config)
