"""Cross-entropy/BCE + soft Dice.

Dice is computed per image and class, then averaged, so the loss is a plain
mean over samples: gradients of a data-parallel run equal those of one
process with the same global batch.

Targets may come on a grid an integer factor finer than the logits (a pooling
stem, models/config.py); they are then pooled into per-pixel class fractions, and
both terms take the fractions as soft targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over images of the mean soft-Dice loss of the classes PRESENT in
    that image. Absent classes are left to the CE/BCE term: with a Dice term
    of their own, a class missing from an image scores 1/(sum p + 1), so every
    faint probability anywhere is punished as hard as missing a whole lesion,
    and the network spends its first epochs predicting nothing at all."""
    dims = (2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    present = (onehot.sum(dims) > 0).to(probs.dtype)
    per_pair = 1.0 - (2 * inter + smooth) / (denom + smooth)
    per_image = (per_pair * present).sum(1) / present.sum(1).clamp(min=1)
    return per_image.mean()


class SegmentationLoss(nn.Module):
    def __init__(self, mode: str, num_classes: int, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.mode, self.num_classes = mode, num_classes
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.empty(0))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.from_fractions(logits, self.fractions(target, logits.shape[-2:]))

    def fractions(self, target: torch.Tensor, size) -> torch.Tensor:
        """Labels (multiclass: (B,H,W) class indices; else (B,K,H,W) 0/1), possibly finer
        than `size`, -> the soft targets both terms take, on the `size` grid."""
        if self.mode == "multiclass":
            return soft_targets(target, self.num_classes + 1, size)
        return pool_to(target.float(), size)

    def from_fractions(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.mode == "multiclass":
            logp = logits.log_softmax(1)
            if self.class_weights.numel():
                # Weighted CE normalised by the total weight, as F.cross_entropy does for labels.
                wt = soft * self.class_weights.view(1, -1, 1, 1)
                ce = -(wt * logp).sum() / wt.sum().clamp_min(1e-12)
            else:
                ce = -(soft * logp).sum(1).mean()
            return ce + soft_dice_loss(logp.exp()[:, 1:], soft[:, 1:])
        bce = F.binary_cross_entropy_with_logits(logits, soft)
        return bce + soft_dice_loss(torch.sigmoid(logits), soft)


def soft_targets(labels: torch.Tensor, channels: int, size) -> torch.Tensor:
    """Label map (B, H, W), possibly finer than `size` -> class fractions (B, C, *size)."""
    b, h, w = labels.shape
    onehot = torch.zeros(b, channels, h, w, device=labels.device).scatter_(1, labels.long()[:, None], 1.0)
    return pool_to(onehot, size)


def pool_to(t: torch.Tensor, size) -> torch.Tensor:
    """Average (B, C, H, W) fractions down to `size`, an integer factor coarser (or equal)."""
    r = t.shape[-1] // size[-1]
    if t.shape[-2:] != tuple(size) and (r < 1 or t.shape[-2] != size[-2] * r or t.shape[-1] != size[-1] * r):
        raise ValueError(f"target grid {tuple(t.shape[-2:])} is not an integer multiple of {tuple(size)}")
    return F.avg_pool2d(t, r) if r > 1 else t


def inverse_frequency_weights(pixel_counts, total_pixels: int) -> torch.Tensor:
    """CE weights for background + classes: (freq)^-1/2, normalised to mean 1.
    The square root tempers the weights so rare classes do not explode."""
    counts = torch.as_tensor(list(pixel_counts), dtype=torch.float64)
    bg = max(total_pixels - counts.sum().item(), 1.0)
    freq = torch.cat([torch.tensor([bg]), counts.clamp(min=1)]) / total_pixels
    w = freq.rsqrt()
    return (w / w.mean()).float()


def init_head_prior(head: nn.Conv2d, mode: str, foreground: float = 0.01) -> None:
    """Start the output layer at the lesion prior (Lin et al. 2017, focal loss):
    lesions cover ~1% of pixels, so a head that starts at 50/50 spends its
    first hundred steps only learning "mostly background". Starting there
    skips that phase."""
    import math

    with torch.no_grad():
        if mode == "multiclass":
            k = head.out_channels - 1
            head.bias.fill_(math.log(foreground / k))
            head.bias[0] = math.log(1 - foreground)
        else:
            head.bias.fill_(math.log(foreground / (1 - foreground)))
