"""Training-only augmentation policies, and their albumentations form.

A policy is data (`Policy`), so the same numbers drive two implementations:
albumentations on the CPU, per sample (here), and a batched torch version that
runs on the GPU (`device_augment.py`).

"paper" reproduces the study's list (rotation, h/v flip, shift-scale-rotate,
brightness/contrast); "default" drops the vertical flip (heads are never upside
down on an axial CT) and uses milder intensity jitter so that HU-derived
brightness keeps its meaning. "flip" is the left-right flip alone: for a short
budget, where the network is still underfitting, every other transform only
slows learning (docs/recipe.md, exp. 26; the demo uses it).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    hflip: float = 0.0           # probabilities p_*; angles in degrees; fractions of the image side
    vflip: float = 0.0
    rotate_p: float = 0.0        # a separate rotation before the affine (the paper has both)
    rotate: float = 0.0
    affine_p: float = 0.0
    translate: float = 0.0
    scale: float = 0.0           # zoom in [1 - scale, 1 + scale]
    affine_rotate: float = 0.0
    intensity_p: float = 0.0
    brightness: float = 0.0      # additive, fraction of full scale
    contrast: float = 0.0        # multiplicative, 1 +- contrast


POLICIES: dict[str, Policy | None] = {
    "none": None,
    "paper": Policy(hflip=0.5, vflip=0.5, rotate_p=0.5, rotate=15, affine_p=0.5, translate=0.0625, scale=0.1,
                    affine_rotate=15, intensity_p=0.5, brightness=0.2, contrast=0.2),
    "default": Policy(hflip=0.5, affine_p=0.7, translate=0.08, scale=0.15, affine_rotate=20,
                      intensity_p=0.5, brightness=0.1, contrast=0.1),
    "flip": Policy(hflip=0.5),
}


def get_policy(name: str) -> Policy | None:
    if name not in POLICIES:
        raise ValueError(f"unknown augmentation policy {name!r}; choose from {tuple(POLICIES)}")
    return POLICIES[name]


def build_augmentation(policy: str, seed: int | None = None, patch: int | None = None) -> A.Compose | None:
    """`patch`: train on patch x patch crops that contain lesion pixels when the
    image has any. The network is fully convolutional, so it still predicts
    whole images; crops cut the cost of a step ~(size/patch)^2 while keeping full
    resolution, which is what thin bleeds need on a CPU budget."""
    # albumentations otherwise asks PyPI for its latest version at import: a network
    # call from a clinical workstation that nobody asked for (and a warning offline).
    # Imported here so that the policy table (used by the CLI) costs nothing to import.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    import cv2

    p = get_policy(policy)
    crop = [A.CropNonEmptyMaskIfExists(patch, patch)] if patch else []
    if p is None:
        return A.Compose(crop, seed=seed) if crop else None
    border = dict(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)
    ops = []
    if p.rotate_p:
        ops.append(A.Rotate(limit=p.rotate, p=p.rotate_p, **border))
    if p.hflip:
        ops.append(A.HorizontalFlip(p=p.hflip))
    if p.vflip:
        ops.append(A.VerticalFlip(p=p.vflip))
    if p.affine_p:
        ops.append(A.Affine(translate_percent=(-p.translate, p.translate), scale=(1 - p.scale, 1 + p.scale),
                            rotate=(-p.affine_rotate, p.affine_rotate), p=p.affine_p, **border))
    if p.intensity_p:
        ops.append(A.RandomBrightnessContrast(brightness_limit=p.brightness, contrast_limit=p.contrast,
                                              p=p.intensity_p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return A.Compose(ops + crop, seed=seed)
