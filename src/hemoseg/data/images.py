"""Decoding 2-D image files into the 8-bit display values the model is trained on.

A single-window dataset (every Roboflow export) is grayscale, often stored as
RGB; a multi-window dataset stores one CT window per colour channel
(preprocessing.py), so there the channels must be kept apart, not mixed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hemoseg.errors import HemosegError


def _decoded(path: Path) -> Image.Image:
    """The fully decoded image, EXIF orientation applied; a one-line error otherwise."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            return im
    except FileNotFoundError:
        raise HemosegError("image file not found", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise HemosegError(f"cannot decode image ({' '.join(str(exc).split())[:120]})", path) from None


def load_gray_uint8(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG as (H, W) uint8, honouring EXIF orientation.

    RGB is converted to luminance (Roboflow stores grayscale CT as RGB).
    16-bit images are scaled linearly from the full 0..65535 range so that the
    same file always maps to the same values, independent of its contents.
    """
    im = _decoded(Path(path))
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        return np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.asarray(im if im.mode == "L" else im.convert("L"), dtype=np.uint8).copy()


def load_display(path: str | Path, channels: int) -> np.ndarray:
    """(H, W, channels) uint8: luminance for one channel, else the image's own
    colour channels, one CT window each."""
    if channels == 1:
        return load_gray_uint8(path)[..., None]
    path = Path(path)
    im = _decoded(path)
    if im.mode not in ("RGB", "RGBA") or channels != 3:
        raise HemosegError(f"is a {len(im.getbands())}-channel {im.mode} image; this dataset or model reads "
                           f"{channels} CT windows as the image's colour channels", path)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) after EXIF orientation, without decoding pixels.

    Pillow's PNG `getexif()` decodes the whole image to look for an eXIf chunk
    after the pixel data, so for PNG only an eXIf chunk ahead of the pixels is
    honoured (where writers put it); a late one is caught when decoding.
    """
    with Image.open(path) as im:
        w, h = im.size
        if im.format == "PNG" and "exif" not in im.info:
            orientation = 1
        else:
            orientation = im.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return h, w
