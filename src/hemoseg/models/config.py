"""Model configuration: the only thing needed to rebuild a network from a checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    in_channels: int = 1
    out_channels: int = 2
    width: int = 64
    """Channels at the first level; they double per level (64..1024 = the paper)."""
    depth: int = 5
    """Encoder levels including the bottleneck."""
    attention: bool = True
    """Additive attention gates on the skips. False gives the plain U-Net baseline."""
    stem: int = 1
    """Average-pool factor in front of the first level: the network computes at
    input/stem, while its labels stay at the input size. Training then fits
    each output pixel to the class fractions of the label pixels under it, so
    a bleed thinner than an output pixel still has a place inside it, which the
    bilinear upsampling of probabilities at inference recovers (docs/recipe.md,
    experiment 18). Hard labels at the coarse grid cap subarachnoid Dice near
    0.86 on the synthetic data; fractions, near 0.96."""
    deep_supervision: int = 0
    """Extra 1x1 heads on this many of the coarser decoder levels, trained
    alongside the main head (their loss sees the labels as class fractions on
    their grid). Used only in training: inference and export return the main head."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


# Named widths. "fast" is what a CPU-only hospital workstation runs by default.
SIZES = {"paper": 64, "base": 32, "fast": 16}
