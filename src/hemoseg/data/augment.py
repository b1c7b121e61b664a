"""Training-only augmentation (albumentations), seedable.

Two policies: "paper" reproduces the study's list (rotation, h/v flip,
shift-scale-rotate, brightness/contrast); "default" drops the vertical flip
(heads are never upside down on an axial CT) and uses milder intensity jitter
so that HU-derived brightness keeps its meaning.
"""

from __future__ import annotations

import warnings

import albumentations as A
import cv2

POLICIES = ("none", "paper", "default")


def build_augmentation(policy: str, seed: int | None = None, patch: int | None = None) -> A.Compose | None:
    """`patch`: train on patch x patch crops that contain lesion pixels when the
    image has any. The network is fully convolutional, so it still predicts
    whole images; crops cut the cost of a step ~(size/patch)^2 while keeping full
    resolution, which is what thin bleeds need on a CPU budget."""
    crop = [A.CropNonEmptyMaskIfExists(patch, patch)] if patch else []
    if policy == "none":
        return A.Compose(crop, seed=seed) if crop else None
    border = dict(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)
    if policy == "paper":
        ops = [
            A.Rotate(limit=15, p=0.5, **border),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-15, 15), p=0.5, **border),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        ]
    elif policy == "default":
        ops = [
            A.HorizontalFlip(p=0.5),
            A.Affine(translate_percent=(-0.08, 0.08), scale=(0.85, 1.15), rotate=(-20, 20), p=0.7, **border),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    else:
        raise ValueError(f"unknown augmentation policy {policy!r}; choose from {POLICIES}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return A.Compose(ops + crop, seed=seed)
