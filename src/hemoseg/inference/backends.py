"""Interchangeable engines that turn a normalised batch into logits.

PyTorch eager is the reference; ONNX Runtime is the fast CPU path for
workstations without a GPU. Both take and return numpy float32 (B,C,H,W).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hemoseg.cpus import cpu_threads
from hemoseg.errors import HemosegError

ONNX_FILE = "model.onnx"
PRECISION_KEY = "hemoseg.precision"  # ONNX metadata: fp32 (plain export) or int8 (quantize_onnx)


class TorchBackend:
    name = "torch"

    def __init__(self, model, device: str | None = None):
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
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
        self.precision = self.session.get_modelmeta().custom_metadata_map.get(PRECISION_KEY, "fp32")
        if self.precision != "fp32":
            self.name = f"onnx-{self.precision}"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]


def export_onnx(model, size: int, path: Path, opset: int = 17) -> None:
    """Export with a dynamic batch axis; fixed spatial size (the checkpoint's)."""
    import importlib.util
    import warnings

    import torch

    if importlib.util.find_spec("onnx") is None:  # torch.onnx needs it; say so in one line
        raise HemosegError("ONNX export needs the onnx package (pip install 'hemoseg[onnx]')")

    model = model.cpu().eval()
    x = torch.zeros(1, model.config.in_channels, size, size)
    tmp = Path(path).with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    tmp.replace(path)


def quantize_onnx(src: Path, dst: Path, calibration: np.ndarray) -> None:
    """Static int8: per-channel int8 weights and uint8 activations whose ranges are
    measured on `calibration` (normalised CT slices, (N,1,S,S)). Convolutions, ~85%
    of CPU time, then run on integer kernels (VNNI where the CPU has it): about
    half the fp32 time on the 2-core CI VM. An approximation, so export checks it.

    Weights use 7 bits (`reduce_range`): without VNNI (AVX2 only, as on many hospital
    workstations) the u8 x s8 kernels add pairs of products in int16, which saturates
    with full 8-bit weights. On a 2-core AVX2 EPYC the demo model's lesion labels
    agreed with PyTorch's at Dice 0.953 with 8 bits and 0.992 with 7; the file may
    run on a machine other than the one that wrote it, so it is always 7."""
    import onnx  # export_onnx has already required it

    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise HemosegError("int8 export needs onnxruntime's quantization tools (pip install 'hemoseg[onnx]')") from None

    class Slices(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"image": np.ascontiguousarray(x, dtype=np.float32)}

    tmp = Path(dst).with_suffix(".int8.tmp.onnx")
    root = logging.getLogger()
    level = root.level
    # The quantiser logs advice about its own example scripts at WARNING on the root
    # logger; its optional graph pre-processing changed neither speed nor labels here.
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(src), str(tmp), Slices(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, {PRECISION_KEY: "int8"})
        onnx.save(model, str(tmp))
        tmp.replace(dst)
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)
