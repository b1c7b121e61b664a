"""Training recipes. A preset is a complete TrainConfig; CLI flags override fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "multiclass"            # binary | multiclass | multilabel
    size: int = 512                     # input side; with stem 2 the network computes at 256 (docs/recipe.md, exp. 20)
    patch: int | None = None            # train on lesion-centred crops of this side (None: whole images)
    stem: int = 2                       # the network runs at size/stem and learns label fractions (models/config.py)
    width: int = 16
    deep_supervision: int = 2           # extra heads on this many coarser decoder levels (docs/recipe.md, exp. 23)
    depth: int = 5
    attention: bool = True
    epochs: int = 60
    batch_size: int = 16
    steps_per_epoch: int | None = None  # None: one pass over the data
    optimizer: str = "adamw"            # adam | adamw
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"            # constant | cosine
    warmup: float = 0.05                # fraction of training spent warming up
    coarse: float = 0.4                 # share of the schedule trained on 2x-pooled inputs first (docs/recipe.md, exp. 31)
    loss: str = "ce_dice"               # bce_dice | ce_dice
    class_weighting: bool = True        # multiclass: inverse-sqrt pixel frequency in CE (docs/recipe.md, exp. 17)
    foreground_fraction: float = 0.5    # share of samples drawn from images with lesions (None-like: 0 = plain shuffle)
    augmentation: str = "default"       # none | flip | paper | default (data/augment.py)
    calibrate: bool = True              # per-class logit offsets fitted on validation (training/calibration.py)
    patience: int | None = None         # early stopping, in epochs without val improvement
    max_minutes: float | None = None    # wall-clock budget; the LR schedule anneals to it
    seed: int = 0
    workers: int | None = None          # None: 0 on CPU, up to 8 worker processes on CUDA
    device_augment: bool | None = None  # batched augmentation on the training device; None: on for CUDA
    compile: bool = False
    amp: bool = True                    # bf16 autocast where it is faster (training/precision.py)
    init: str | None = None             # start from this run's weights (training/transfer.py)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A saved config; fields it predates take the value that reproduces its run,
        not today's default (a resumed old run must go on as it started)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**_BEFORE_THE_FIELD, **{k: v for k, v in d.items() if k in known}})

    def override(self, **changes) -> "TrainConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# Behaviour before each later-added field existed: no stem, no calibration, no deep supervision,
# one resolution throughout.
_BEFORE_THE_FIELD = {"stem": 1, "calibrate": False, "deep_supervision": 0, "coarse": 0.0}

PRESETS: dict[str, TrainConfig] = {
    # The study, exactly: binary, paper width, Adam 1e-4 for 20 epochs, BCE+Dice,
    # its augmentations, plain shuffling, best epoch by validation Dice.
    "paper": TrainConfig(
        mode="binary", size=256, stem=1, width=64, epochs=20, batch_size=8, optimizer="adam", lr=1e-4,
        weight_decay=0.0, schedule="constant", warmup=0.0, loss="bce_dice", foreground_fraction=0.0,
        augmentation="paper", calibrate=False, class_weighting=False, deep_supervision=0, coarse=0.0,
    ),
    # Our recipe, chosen by validation experiments (docs/recipe.md).
    "default": TrainConfig(),
}
