"""A trained model plus everything needed to apply it faithfully.

The checkpoint's Preprocessing is the single source of the intensity window,
input size and normalisation, so a model trained on brain-window JPEGs sees
DICOM Hounsfield units through the same window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hemoseg.data.preprocessing import describe_windows
from hemoseg.errors import HemosegError
from hemoseg.inference.backends import ONNX_FILE, OnnxBackend, TorchBackend
from hemoseg.inference import intracranial
from hemoseg.training.checkpoint import Checkpoint, load_checkpoint


class Predictor:
    def __init__(self, ckpt: Checkpoint, backend, batch_size: int = 8):
        self.checkpoint = ckpt
        self.class_names: list[str] = list(ckpt.classes.names)
        self.preprocessing = ckpt.preprocessing
        self.mode = ckpt.mode
        self.backend = backend
        self.batch_size = batch_size

    @classmethod
    def from_run(cls, run_dir: str | Path, backend: str = "auto", device: str | None = None) -> "Predictor":
        """backend: torch | onnx | auto (ONNX when the run has an exported model.onnx and
        no GPU is in use, else PyTorch)."""
        run_dir = Path(run_dir)
        onnx_path = (run_dir if run_dir.is_dir() else run_dir.parent) / ONNX_FILE
        if backend == "auto":
            backend = "onnx" if onnx_path.is_file() and device is None and not _cuda_available() else "torch"
        if backend == "onnx":
            ckpt = load_checkpoint(run_dir, weights=False)  # the ONNX file has the weights; no torch import
            if not onnx_path.is_file():
                raise HemosegError(f"no {ONNX_FILE} in the run folder (run 'hemoseg export {run_dir}')", run_dir)
            return cls(ckpt, OnnxBackend(onnx_path))
        if backend != "torch":
            raise HemosegError(f"unknown backend {backend!r} (torch, onnx or auto)")
        ckpt = load_checkpoint(run_dir)
        return cls(ckpt, TorchBackend(ckpt.build_model(), device))

    # ------------------------------------------------------------------
    def to_display(self, pixels: np.ndarray, is_hu: bool, colour: np.ndarray | None = None) -> np.ndarray:
        """Study pixels (Z,H,W) -> uint8 (Z,H,W,C) display values in the model's training space.

        Image input has no HU to window: a one-window model takes its luminance,
        a multi-window model its colour channels, which must then exist."""
        prep = self.preprocessing
        if is_hu:
            return prep.window_hu(pixels)
        if prep.channels == 1:
            return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)[..., None]
        if colour is None or colour.shape[-1] != prep.channels:
            raise HemosegError(f"this model reads {prep.channels} CT windows "
                               f"({describe_windows(prep.windows)}); a grayscale image carries one. "
                               "Give it the DICOM or NIfTI (HU), or images exported with those windows as RGB")
        return colour

    def probabilities(self, display: np.ndarray, tta: bool = False) -> np.ndarray:
        """uint8 (B,S,S,C) at model size -> float32 probabilities (B,K,S,S)."""
        x = self.preprocessing.normalize(display)
        logits = self.backend(x)
        probs = probabilities(logits, self.mode)
        if tta:  # horizontal flip: heads are left-right symmetric, up-down is not
            flipped = self.backend(np.ascontiguousarray(x[..., ::-1]))
            probs = (probs + probabilities(flipped[..., ::-1], self.mode)) / 2
        return np.ascontiguousarray(probs, dtype=np.float32)

    def predict_volume(self, study, tta: bool = False, progress=None) -> np.ndarray:
        """uint8 label volume (Z,H,W) at the study's original resolution.

        With HU input, labels outside the skull are removed (intracranial.py)."""
        pixels = study.pixels
        z, h, w = pixels.shape
        out = np.empty((z, h, w), np.uint8)
        for start in range(0, z, self.batch_size):
            chunk = pixels[start:start + self.batch_size]
            colour = None if study.colour is None else study.colour[start:start + self.batch_size]
            display = self.to_display(chunk, study.is_hu, colour)
            small = np.stack([self.preprocessing.resize_image(s) for s in display])
            probs = self.probabilities(small, tta)
            # Labels of the bilinearly resampled probabilities, not resampled labels,
            # so borders stay smooth at full resolution.
            labels = resampled_labels(probs, self.mode, h, w)
            if intracranial.applies(study):
                labels[~intracranial.intracranial_mask(chunk, study.spacing[1] if study.spacing else None)] = 0
            out[start:start + len(chunk)] = labels
            if progress is not None:
                progress(len(chunk))
        return out


def probabilities(logits: np.ndarray, mode: str) -> np.ndarray:
    """numpy twin of heads.probabilities: softmax over channels, or sigmoids."""
    logits = np.asarray(logits, dtype=np.float32)
    if mode == "multiclass":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-logits))


def _cuda_available() -> bool:
    """Whether PyTorch would find a GPU, without importing it where no NVIDIA
    device exists (the import alone is ~1 s of every `hemoseg predict` on a CPU)."""
    if not any(Path("/dev").glob("nvidia*")) and not Path("/dev/dxg").exists():  # dxg: a GPU under WSL2
        return False
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------
# labels at full resolution
# --------------------------------------------------------------------------
def channel_labels(probs: np.ndarray, mode: str, axis: int = 1, threshold: float = 0.5) -> np.ndarray:
    """numpy twin of heads.labels_from_probabilities (first maximum wins ties).

    One vectorised pass per channel: a reduction over a short, strided channel
    axis (torch or numpy argmax) took ~1.8 s per 32 slices of 512x512 on 2 busy cores."""
    probs = np.asarray(probs)
    best = np.take(probs, 0, axis=axis).copy()
    idx = np.zeros(best.shape, np.uint8)
    for k in range(1, probs.shape[axis]):
        pk = np.take(probs, k, axis=axis)
        higher = pk > best
        np.copyto(best, pk, where=higher)
        idx[higher] = k
    if mode == "multiclass":
        return idx
    return np.where(best > threshold, idx + 1, 0).astype(np.uint8)


def _source_axis(n_in: int, n_out: int):
    """Source index pair and weight per output index, as F.interpolate
    (bilinear, align_corners=False) and cv2 INTER_LINEAR compute them."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _resize_probabilities(probs: np.ndarray, h: int, w: int) -> np.ndarray:
    """(B,C,S,S) -> (B,H,W,C) bilinear, align_corners=False (cv2 = F.interpolate)."""
    import cv2

    b, c = probs.shape[:2]
    out = np.empty((b, h, w, c), np.float32)
    for i in range(b):
        r = cv2.resize(np.ascontiguousarray(probs[i].transpose(1, 2, 0)), (w, h),
                       interpolation=cv2.INTER_LINEAR)
        out[i] = r.reshape(h, w, c)
    return out


def resampled_labels(probs: np.ndarray, mode: str, h: int, w: int,
                     dense_fraction: float = 0.15) -> np.ndarray:
    """Labels of `probs` (B,C,S,S) bilinearly resampled to (H,W), computed only
    where resampling can change them.

    A bilinear value is a convex combination of (up to) four source pixels, and
    a convex combination of probability vectors that share their arg-max (and,
    for multilabel, all clear or all miss the threshold) keeps that label. So
    pixels whose four sources agree take the source label directly; only those
    on label borders are interpolated. When borders are everywhere (an
    untrained model), the whole stack is resampled instead, which is cheaper."""
    probs = np.asarray(probs, dtype=np.float32)
    b, c, sh, sw = probs.shape
    low = channel_labels(probs, mode)
    if (sh, sw) == (h, w):
        return low
    y0, y1, wy = _source_axis(sh, h)
    x0, x1, wx = _source_axis(sw, w)
    top, bottom = low[:, y0], low[:, y1]
    out = top[:, :, x0]
    border = (out != top[:, :, x1]) | (out != bottom[:, :, x0]) | (out != bottom[:, :, x1])
    if border.mean() > dense_fraction:
        return channel_labels(_resize_probabilities(probs, h, w), mode, axis=3)
    bi, yi, xi = np.nonzero(border)
    if bi.size:
        ya, yb, xa, xb = y0[yi], y1[yi], x0[xi], x1[xi]
        ly, lx = wy[yi, None], wx[xi, None]
        top_row = probs[bi, :, ya, xa] * (1 - lx) + probs[bi, :, ya, xb] * lx
        bottom_row = probs[bi, :, yb, xa] * (1 - lx) + probs[bi, :, yb, xb] * lx
        out[bi, yi, xi] = channel_labels(top_row * (1 - ly) + bottom_row * ly, mode)
    return out


def check_compatible(pred: Predictor, class_names: list[str]) -> None:
    """Refuse to score a model against data with different classes."""
    if list(class_names) != pred.class_names:
        raise HemosegError(f"model classes {pred.class_names} do not match dataset classes {list(class_names)}")
