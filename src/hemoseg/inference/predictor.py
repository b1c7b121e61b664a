"""A trained model plus everything needed to apply it faithfully.

The checkpoint's Preprocessing is the single source of the intensity window,
input size and normalisation, so a model trained on brain-window JPEGs sees
DICOM Hounsfield units through the same window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hemoseg.errors import HemosegError
from hemoseg.inference.backends import ONNX_FILE, OnnxBackend, TorchBackend
from hemoseg.models.heads import labels_from_probabilities, probabilities
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
        ckpt = load_checkpoint(run_dir)
        onnx_path = (run_dir if run_dir.is_dir() else run_dir.parent) / ONNX_FILE
        if backend == "auto":
            backend = "onnx" if onnx_path.is_file() and not torch.cuda.is_available() and device is None else "torch"
        if backend == "onnx":
            if not onnx_path.is_file():
                raise HemosegError(f"no {ONNX_FILE} in the run folder (run 'hemoseg export {run_dir}')", run_dir)
            return cls(ckpt, OnnxBackend(onnx_path))
        if backend != "torch":
            raise HemosegError(f"unknown backend {backend!r} (torch, onnx or auto)")
        return cls(ckpt, TorchBackend(ckpt.build_model(), device))

    # ------------------------------------------------------------------
    def to_display(self, pixels: np.ndarray, is_hu: bool) -> np.ndarray:
        """Study pixels -> uint8 display values in the model's training space."""
        if is_hu:
            return self.preprocessing.window_hu(pixels)
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)

    def probabilities(self, display: np.ndarray, tta: bool = False) -> np.ndarray:
        """uint8 (B,S,S) at model size -> float32 probabilities (B,C,S,S)."""
        x = self.preprocessing.normalize(display)[:, None]
        logits = self.backend(x)
        probs = probabilities(torch.from_numpy(logits), self.mode)
        if tta:  # horizontal flip: heads are left-right symmetric, up-down is not
            flipped = self.backend(np.ascontiguousarray(x[..., ::-1]))
            probs = (probs + probabilities(torch.from_numpy(np.ascontiguousarray(flipped[..., ::-1])), self.mode)) / 2
        return probs.numpy()

    def predict_volume(self, study, tta: bool = False, progress=None) -> np.ndarray:
        """uint8 label volume (Z,H,W) at the study's original resolution."""
        pixels = study.pixels
        z, h, w = pixels.shape
        size = self.preprocessing.size
        out = np.empty((z, h, w), np.uint8)
        for start in range(0, z, self.batch_size):
            chunk = pixels[start:start + self.batch_size]
            display = self.to_display(chunk, study.is_hu)
            small = np.stack([self.preprocessing.resize_image(s) for s in display])
            probs = torch.from_numpy(self.probabilities(small, tta))
            if (h, w) != (size, size):
                # Resample probabilities, not labels, so borders stay smooth at full resolution.
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            out[start:start + len(chunk)] = labels_from_probabilities(probs, self.mode).numpy()
            if progress is not None:
                progress(len(chunk))
        return out


def check_compatible(pred: Predictor, class_names: list[str]) -> None:
    """Refuse to score a model against data with different classes."""
    if list(class_names) != pred.class_names:
        raise HemosegError(f"model classes {pred.class_names} do not match dataset classes {list(class_names)}")
