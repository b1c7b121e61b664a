"""The one description of how pixels become model input.

A `Preprocessing` object is saved inside every checkpoint, and both training
and inference go through the functions here, so a model sees exactly the same
intensities and geometry at inference as it did in training.

Intensity path. Roboflow exports hold 8-bit brain-window JPEGs, so the model's
native input space is "display values 0..255 under a CT window". Hounsfield
input (DICOM, NIfTI) is mapped into that same space with the recorded window
(default brain window L40/W80) before anything else happens. The 8-bit values
are then scaled to [0, 1] and standardised with the training set's mean/std.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Preprocessing:
    size: int = 256
    """Square side length the network sees."""
    window_center: float = 40.0
    """CT window (HU) that maps Hounsfield input to the 8-bit training space."""
    window_width: float = 80.0
    mean: float = 0.0
    """Mean and std of training pixels after scaling to [0, 1]."""
    std: float = 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown preprocessing fields: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    # --- intensity -------------------------------------------------------
    def window_hu(self, hu: np.ndarray) -> np.ndarray:
        """Hounsfield units -> uint8 display values, as a CT viewer would."""
        return window_to_uint8(hu, self.window_center, self.window_width)

    def normalize(self, display: np.ndarray) -> np.ndarray:
        """uint8 (or float 0..255) display values -> float32 network input."""
        x = np.asarray(display, dtype=np.float32) * (1.0 / 255.0)
        return (x - np.float32(self.mean)) / np.float32(self.std)

    # --- geometry --------------------------------------------------------
    def resize_image(self, img: np.ndarray) -> np.ndarray:
        return resize_image(img, self.size)

    def resize_mask(self, mask: np.ndarray) -> np.ndarray:
        return resize_mask(mask, self.size)


def window_to_uint8(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    lo = center - width / 2.0
    x = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) * np.float32(255.0 / width)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """Area interpolation when shrinking (no aliasing), bilinear when growing."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Labels stay labels. Accepts (H,W) or (C,H,W).

    Shrinking takes each output pixel's majority label (area fractions per
    label value, ties to the lower value). Nearest neighbour would pick one
    corner of each block and shift thin lesions by half a source pixel
    against the area-resized image."""
    if mask.shape[-2:] == (size, size):
        return mask
    if mask.ndim == 3:
        return np.stack([resize_mask(m, size) for m in mask])
    dtype = mask.dtype
    m = mask.astype(np.uint8)
    if m.shape[0] < size or m.shape[1] < size:
        return cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST).astype(dtype)
    values = np.unique(m)
    if len(values) == 1:
        return np.full((size, size), values[0], dtype=dtype)
    frac = np.stack([cv2.resize((m == v).astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
                     for v in values])
    return values[frac.argmax(0)].astype(dtype)
