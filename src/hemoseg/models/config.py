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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


# Named widths. "fast" is what a CPU-only hospital workstation runs by default.
SIZES = {"paper": 64, "base": 32, "fast": 16}
