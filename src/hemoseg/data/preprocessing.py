"""The one description of how pixels become model input.

A `Preprocessing` object is saved inside every checkpoint, and both training
and inference go through the functions here, so a model sees exactly the same
intensities and geometry at inference as it did in training.

Intensity path. Roboflow exports hold 8-bit brain-window JPEGs, so the model's
native input space is "display values 0..255 under CT windows", one channel
per window. Hounsfield input (DICOM, NIfTI) is mapped into that same space
with the recorded windows (default: the brain window L40/W80 alone) before
anything else happens. The 8-bit values are then scaled to [0, 1] and
standardised with the training set's per-channel mean/std.

Why more than one window: in the brain window every density above 80 HU is
white, so an acute subdural or epidural bleed (50-90 HU) lying on the skull
has no visible outer border. Radiologists read a subdural window (L80/W200)
for exactly this; a model given the same channels can see it too. The first
window is the one shown to people (overlays, montages, the viewer).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import cv2
import numpy as np

Window = tuple[float, float]
"""(level, width) in Hounsfield units."""

NAMED_WINDOWS: dict[str, Window] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "bone": (600.0, 2800.0),
}

IMAGE_WINDOW_COUNTS = (1, 3)
"""Windows an 8-bit image file can hold: gray, or one per R, G, B."""


def window_name(w: Window) -> str:
    for name, known in NAMED_WINDOWS.items():
        if tuple(w) == known:
            return name
    return f"L{w[0]:g}/W{w[1]:g}"


def describe_windows(windows) -> str:
    """'brain+subdural+bone': how errors and logs name a model's or dataset's input."""
    return "+".join(window_name(w) for w in windows)


def parse_windows(spec: str) -> tuple[Window, ...]:
    """'brain,subdural,bone' or 'L40/W80,...' (names and L/W pairs mix) -> windows."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if part.lower() in NAMED_WINDOWS:
            out.append(NAMED_WINDOWS[part.lower()])
            continue
        try:
            lvl, wid = part.upper().lstrip("L").split("/W")
            out.append((float(lvl), float(wid)))
        except ValueError:
            raise ValueError(f"unknown window {part!r} (use {', '.join(NAMED_WINDOWS)} or L<level>/W<width>)") from None
    return check_windows(out)


def check_windows(windows) -> tuple[Window, ...]:
    """Validated tuple of windows; ValueError names what is wrong."""
    try:
        out = tuple((float(lv), float(wd)) for lv, wd in windows)
    except (TypeError, ValueError):
        raise ValueError(f"windows must be [level, width] pairs, got {windows!r}") from None
    if not out:
        raise ValueError("at least one window is needed")
    for lv, wd in out:
        if not (math.isfinite(lv) and math.isfinite(wd) and wd > 0):
            raise ValueError(f"invalid window L{lv:g}/W{wd:g} (width must be positive)")
    return out


@dataclass(frozen=True)
class Preprocessing:
    size: int = 256
    """Square side length the network sees."""
    windows: tuple[Window, ...] = (NAMED_WINDOWS["brain"],)
    """CT windows that map Hounsfield input to the 8-bit training space, one
    input channel each; the first is the one shown to people."""
    mean: tuple[float, ...] = (0.0,)
    """Per-channel mean and std of training pixels after scaling to [0, 1]."""
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise the field types once, here
        set_(self, "windows", check_windows(self.windows))
        for name in ("mean", "std"):
            v = getattr(self, name)
            v = (float(v),) if np.isscalar(v) else tuple(float(x) for x in v)
            if len(v) == 1 and self.channels > 1:
                v = v * self.channels
            if len(v) != self.channels:
                raise ValueError(f"{name} has {len(v)} values for {self.channels} windows")
            set_(self, name, v)

    @property
    def channels(self) -> int:
        return len(self.windows)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        d = dict(d)
        if "window_center" in d or "window_width" in d:  # checkpoints before multi-window input
            d["windows"] = [(d.pop("window_center", 40.0), d.pop("window_width", 80.0))]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown preprocessing fields: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    # --- intensity -------------------------------------------------------
    def window_hu(self, hu: np.ndarray) -> np.ndarray:
        """Hounsfield units (...) -> uint8 display values (..., C), as a CT viewer would."""
        return window_stack(hu, self.windows)

    def normalize(self, display: np.ndarray) -> np.ndarray:
        """uint8 (or float 0..255) display values (..., H, W, C) -> float32 network input (..., C, H, W)."""
        display = np.asarray(display)
        if display.dtype != np.uint8 or display.ndim < 3:
            return self._normalize_values(display)
        # uint8 has 256 values: look each channel up in a table built by the same
        # arithmetic (bit-identical). A 32-slice 512 px study took 0.26-0.67 s the
        # arithmetic way, 0.04 s this way.
        c = display.shape[-1]
        table = self._normalize_values(np.arange(256, dtype=np.uint8)[:, None, None].repeat(c, 2))[:, :, 0]
        *lead, h, w, _ = display.shape
        flat = display.reshape(-1, h, w, c)
        out = np.empty((len(flat), c, h, w), np.float32)
        for i, img in enumerate(flat):
            for k in range(c):
                out[i, k] = cv2.LUT(np.ascontiguousarray(img[..., k]), table[k])
        return out.reshape(*lead, c, h, w)

    def _normalize_values(self, display: np.ndarray) -> np.ndarray:
        x = np.asarray(display, dtype=np.float32) * np.float32(1.0 / 255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    # --- geometry --------------------------------------------------------
    def resize_image(self, img: np.ndarray) -> np.ndarray:
        return resize_image(img, self.size)

    def resize_mask(self, mask: np.ndarray) -> np.ndarray:
        return resize_mask(mask, self.size)


def window_to_uint8(hu: np.ndarray, center: float, width: float, out: np.ndarray | None = None) -> np.ndarray:
    """HU -> uint8 display values: round((HU - low) * 255 / width), clipped to 0..255, in
    float32. One scratch array worked in place: a fresh process pays a page fault for
    every new page, and the plain expression allocated four arrays of the volume's size."""
    lo = center - width / 2.0
    x = np.subtract(hu, np.float32(lo), dtype=np.float32)
    x *= np.float32(255.0 / width)
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    if out is None:
        return x.astype(np.uint8)
    np.copyto(out, x, casting="unsafe")
    return out


def window_stack(hu: np.ndarray, windows) -> np.ndarray:
    """HU (...) -> uint8 (..., C), one channel per (level, width) window."""
    out = np.empty(np.shape(hu) + (len(windows),), np.uint8)
    for k, (level, width) in enumerate(windows):
        window_to_uint8(hu, level, width, out=out[..., k])
    return out


def windowed_image(hu: np.ndarray, windows) -> np.ndarray:
    """HU (H, W) -> the uint8 pixels of an image file: gray (H, W) for one window,
    (H, W, 3) for three (one per R, G, B; IMAGE_WINDOW_COUNTS)."""
    img = window_stack(hu, windows)
    return img[..., 0] if len(windows) == 1 else img


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """(H, W) or channel-last (H, W, C). Area interpolation when shrinking (no
    aliasing), bilinear when growing."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    out = cv2.resize(img, (size, size), interpolation=interp)
    return out.reshape(size, size, *img.shape[2:])  # cv2 drops a single trailing channel


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
