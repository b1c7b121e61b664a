"""Interchangeable engines that turn a normalised batch into logits.

PyTorch eager is the reference; ONNX Runtime is the fast CPU path for
workstations without a GPU. Both take and return numpy float32 (B,C,H,W).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hemoseg.cpus import cpu_threads
from hemoseg.errors import HemosegError

ONNX_FILE = "model.onnx"


class TorchBackend:
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads())

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(self.device)
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.model(t).float().cpu().numpy()
        return self.model(t).numpy()


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise HemosegError("onnxruntime is not installed (pip install 'hemoseg[onnx]')") from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = cpu_threads()
        # Idle workers sleep instead of spinning: on a 2-core workstation that
        # also runs other work, spinning cost ~10% of the network's wall time
        # and CPU that the output writers could have used.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise HemosegError(f"cannot load ONNX model ({' '.join(str(exc).split())[:120]})", path) from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]


def export_onnx(model: torch.nn.Module, size: int, path: Path, opset: int = 17) -> None:
    """Export with a dynamic batch axis; fixed spatial size (the checkpoint's)."""
    import warnings

    model = model.cpu().eval()
    x = torch.zeros(1, model.config.in_channels, size, size)
    tmp = Path(path).with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    tmp.replace(path)
