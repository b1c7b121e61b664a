"""Decode-once training data.

Every image is decoded, resized and rasterised exactly once into compact uint8
arrays; epochs then only index memory and augment. Items that cannot be
decoded are skipped and counted, never silently dropped.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from hemoseg.data.coco import ClassList, Problem, Split
from hemoseg.data.images import load_display
from hemoseg.data.preprocessing import Preprocessing, resize_image, resize_mask
from hemoseg.data.rasterize import Mode, rasterize
from hemoseg.errors import HemosegError


@dataclass
class CachedSplit:
    """uint8 images (N,S,S,C), one channel per CT window, and targets: (N,S,S) for binary/multiclass, (N,K,S,S) for multilabel."""

    name: str
    images: np.ndarray
    targets: np.ndarray
    file_names: list[str]
    mode: Mode
    skipped: list[Problem] = field(default_factory=list)
    build_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.images)

    def has_lesion(self) -> np.ndarray:
        t = self.targets.reshape(len(self.targets), -1)
        return t.max(axis=1) > 0

    def channel_stats(self) -> dict[str, tuple[float, ...]]:
        """Per-channel mean and std of the pixels scaled to [0, 1] (Preprocessing's fields)."""
        mean, std = [], []
        for c in range(self.images.shape[-1]):
            pix = self.images[..., c].astype(np.float32) / 255.0  # one channel's float copy at a time
            mean.append(round(float(pix.mean()), 6))
            std.append(round(float(pix.std()) or 1.0, 6))
        return {"mean": tuple(mean), "std": tuple(std)}

    def class_pixel_counts(self, num_classes: int) -> np.ndarray:
        if self.mode == "multilabel":
            return self.targets.sum(axis=(0, 2, 3), dtype=np.int64)
        if self.mode == "binary":
            return np.array([int(self.targets.sum())], dtype=np.int64)
        return np.bincount(self.targets.ravel(), minlength=num_classes + 1)[1:]


def cache_split(split: Split, classes: ClassList, mode: Mode, size: int) -> CachedSplit:
    start = time.perf_counter()
    images, targets, names, skipped = [], [], [], list(split.problems)
    for rec in split.images:
        try:
            img = load_display(rec.path, len(split.windows))
        except HemosegError as exc:
            skipped.append(Problem("error", str(rec.path), f"image {rec.id}", str(exc).split(": ", 1)[-1]))
            continue
        if img.shape[:2] != (rec.height, rec.width):
            skipped.append(Problem("error", str(rec.path), f"image {rec.id}",
                                   f"decoded size {img.shape[1]}x{img.shape[0]} disagrees with JSON"))
            continue
        images.append(resize_image(img, size))
        targets.append(resize_mask(rasterize(rec, classes, mode), size))
        names.append(rec.file_name)
    if not images:
        raise HemosegError(f"split '{split.name}' has no usable images", split.json_path)
    return CachedSplit(split.name, np.stack(images), np.stack(targets), names, mode, skipped,
                       time.perf_counter() - start)


def skipped_summary(skipped: list[Problem]) -> str:
    """'3 items skipped: 2 x image file missing, 1 x ...' for the training log."""
    errors = [p for p in skipped if p.severity == "error"]
    if not errors:
        return "0 items skipped"
    reasons = Counter(p.message.split(":")[0].split("(")[0].strip() for p in errors)
    return f"{len(errors)} items skipped: " + ", ".join(f"{n} x {r}" for r, n in reasons.most_common())


class SegmentationDataset(TorchDataset):
    """Augments cached arrays and standardises intensities.

    Returns image (C,S,S) float32 and target: (S,S) int64 for multiclass,
    (C,S,S) float32 for binary/multilabel.
    """

    def __init__(self, cache: CachedSplit, prep: Preprocessing, augment=None):
        self.cache, self.prep, self.augment = cache, prep, augment

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key):
        """key: an index, or (index, augmentation seed) for reproducible augmentation."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        img, tgt = self.cache.images[i], self.cache.targets[i]
        if self.augment is not None:
            if seed is not None:
                self.augment.set_random_seed(seed)
            if tgt.ndim == 3:  # channels-last for albumentations
                out = self.augment(image=img, mask=np.ascontiguousarray(tgt.transpose(1, 2, 0)))
                img, tgt = out["image"], out["mask"].transpose(2, 0, 1)
            else:
                out = self.augment(image=img, mask=tgt)
                img, tgt = out["image"], out["mask"]
        x = torch.from_numpy(self.prep.normalize(img))
        if self.cache.mode == "multiclass":
            y = torch.from_numpy(np.ascontiguousarray(tgt).astype(np.int64))
        elif self.cache.mode == "binary":
            y = torch.from_numpy(np.ascontiguousarray(tgt)[None].astype(np.float32))
        else:
            y = torch.from_numpy(np.ascontiguousarray(tgt).astype(np.float32))
        return x, y
