"""`hemoseg export RUN [--onnx FILE] [--int8]`: ONNX for CPU workstations, with a parity check.

The Predictor's auto backend picks up RUN/model.onnx without asking, so an
export is only kept if ONNX Runtime reproduces PyTorch's probabilities and
labels on random and CT-like inputs; the numbers go to RUN/onnx_parity.json.
An int8 model is an approximation by design: it is judged, by label agreement,
on held-out inputs of the kind it was calibrated on (the run's validation
images, or CT-like phantoms when the dataset has moved), not on noise.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from hemoseg.errors import HemosegError

# A correct fp32 export differs from PyTorch by float32 rounding (~1e-6); these
# bounds leave room for kernel differences but catch a wrong graph at once.
# int8 is gated on labels only: background dominates the pixel match rate, so
# lesion pixels must also agree (Dice between the two label maps).
THRESHOLDS = {"fp32": {"max_abs_prob_diff": 1e-3, "min_label_match_rate": 0.999, "min_lesion_agreement": None},
              "int8": {"max_abs_prob_diff": None, "min_label_match_rate": 0.99, "min_lesion_agreement": 0.9}}
PARITY_FILE = "onnx_parity.json"


def register(sub) -> None:
    p = sub.add_parser("export", help="export a trained run to ONNX (fast CPU inference)",
                       description="Write RUN/model.onnx (dynamic batch, the checkpoint's input size), then "
                                   "check it against PyTorch and record the result in RUN/onnx_parity.json. "
                                   "'hemoseg predict/evaluate --backend auto' use it on machines without a GPU.")
    p.add_argument("run", type=Path, help="run folder (uses best.safetensors) or a .safetensors checkpoint")
    p.add_argument("--onnx", type=Path, metavar="FILE", help="output file (default RUN/model.onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--samples", type=int, default=8, help="inputs per kind in the parity check (default 8)")
    p.add_argument("--int8", action="store_true",
                   help="quantise to int8, calibrated on the run's training images (CT-like phantoms if the "
                        "dataset has moved): ~2x faster on CPU, labels checked against PyTorch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemoseg.inference.backends import ONNX_FILE, export_onnx, quantize_onnx
    from hemoseg.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.run)
    run_dir = args.run if args.run.is_dir() else args.run.parent
    out = args.onnx or run_dir / ONNX_FILE
    _check_writable(out)
    model = ckpt.build_model().eval()
    size = ckpt.preprocessing.size
    precision = "int8" if args.int8 else "fp32"
    fp32_out = out.with_suffix(".fp32.onnx") if args.int8 else out
    staging = [fp32_out.with_suffix(".tmp.onnx")] + ([fp32_out] if args.int8 else [])  # export_onnx's tmp
    t0 = time.perf_counter()
    try:
        export_onnx(model, size, fp32_out, opset=args.opset)
        _check_graph(fp32_out)
        if args.int8:
            quantize_onnx(fp32_out, out, calibration_inputs(ckpt))
    except OSError as exc:
        raise HemosegError(f"cannot write ONNX file ({exc.strerror or exc})", out) from None
    finally:
        for f in staging:
            f.unlink(missing_ok=True)
    export_s = time.perf_counter() - t0

    report = parity_check(ckpt, model, out, args.samples, precision)
    report.update(onnx_file=str(out), opset=args.opset, input_size=size, export_seconds=round(export_s, 2),
                  file_megabytes=round(out.stat().st_size / 1e6, 3))
    try:
        (run_dir / PARITY_FILE).write_text(json.dumps(report, indent=2))
        where = f"; details in {run_dir / PARITY_FILE}"
    except OSError as exc:
        where = f" (could not write {run_dir / PARITY_FILE}: {exc.strerror})"
    summary = (f"max |p_torch - p_onnx| = {report['max_abs_prob_diff']:.2e}, identical labels on "
               f"{100 * report['label_match_rate']:.4f}% of pixels, lesion agreement (Dice) "
               f"{report['lesion_agreement']:.4f}, over {', '.join(report['judged_on'])} inputs")
    if not report["passed"]:
        out.unlink(missing_ok=True)  # never leave a wrong model where --backend auto would use it
        raise HemosegError(f"ONNX export does not reproduce PyTorch ({summary}); removed it{where}", out)
    print(f"wrote {out} ({precision}, {report['file_megabytes']:.1f} MB, {size}x{size}, dynamic batch)")
    print(f"parity: {summary}{where}")
    return 0


def _check_writable(out: Path) -> None:
    """Fail before the (slow) export, with the reason, rather than inside torch.onnx."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise HemosegError("output path is a folder; give a file name such as model.onnx", out)
    if not parent.is_dir():
        raise HemosegError("output folder does not exist" if not parent.exists()
                           else "output folder is not a folder", parent)
    probe = parent / f".{out.name}.write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HemosegError(f"output folder is not writable ({exc.strerror})", parent) from None


def _check_graph(path: Path) -> None:
    try:
        import onnx
    except ImportError:
        return
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # onnx raises several unrelated types
        raise HemosegError(f"exported graph is invalid ({' '.join(str(exc).split())[:120]})", path) from None


def parity_inputs(ckpt, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Normalised (B,C,S,S) batches: Gaussian noise (stresses every activation),
    CT-like phantoms in HU under the model's windows (skull ring, brain, a bright
    bleed: the intended input range), and up to n real images from the run's
    dataset if it is still there."""
    prep, size = ckpt.preprocessing, ckpt.preprocessing.size
    rng = np.random.default_rng(seed)
    inputs = {"random": rng.standard_normal((n, prep.channels, size, size)).astype(np.float32)}
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    phantoms = []
    for _ in range(n):
        a, b = rng.uniform(0.30, 0.42, 2)
        r = (xx / a) ** 2 + (yy / b) ** 2
        hu = np.where(r < 1, 30.0, -1000.0) + np.where((r > 0.82) & (r < 1), 1000.0, 0.0)
        cx, cy, rad = rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(0.03, 0.1)
        hu += np.where((xx - cx) ** 2 + (yy - cy) ** 2 < rad ** 2, 40.0, 0.0)
        phantoms.append(hu + rng.normal(0, 4, hu.shape))
    inputs["ct_phantom"] = prep.normalize(prep.window_hu(np.stack(phantoms)))
    real = _real_images(ckpt, n, "valid")
    if real is not None:
        inputs["dataset"] = prep.normalize(real)
    return inputs


def calibration_inputs(ckpt, n: int = 32) -> np.ndarray:
    """Activation ranges for int8 come from training images (never the slices the
    parity check uses), else from CT-like phantoms drawn with another seed."""
    real = _real_images(ckpt, n, "train")
    if real is not None:
        return ckpt.preprocessing.normalize(real)
    return parity_inputs(ckpt, n, seed=1)["ct_phantom"]


def _real_images(ckpt, n: int, prefer: str) -> np.ndarray | None:
    """Best effort: the dataset may have moved since training; parity does not depend on it."""
    from hemoseg.data.coco import load_dataset
    from hemoseg.data.images import load_display

    path = (ckpt.meta.get("data_summary") or {}).get("dataset")
    if not path or not os.path.exists(path):
        return None
    try:
        ds = load_dataset(path, check_files=False)
        split = ds.splits.get(prefer) or ds.splits.get("train") or next(iter(ds.splits.values()))
        prep = ckpt.preprocessing
        if split.windows != prep.windows:
            return None
        imgs = [prep.resize_image(load_display(r.path, prep.channels)) for r in split.images[:n]]
    except (HemosegError, OSError, ValueError, StopIteration):
        return None
    return np.stack(imgs) if imgs else None


def parity_check(ckpt, model, onnx_path: Path, n: int = 8, precision: str = "fp32") -> dict:
    """Compare ONNX Runtime (the Predictor's OnnxBackend) with float32 PyTorch on CPU."""
    import onnxruntime
    import torch

    from hemoseg.inference.backends import OnnxBackend
    from hemoseg.models.heads import labels_from_probabilities, probabilities

    backend = OnnxBackend(onnx_path)
    model = model.cpu().eval()
    limits = THRESHOLDS[precision]
    per_kind = {}
    for kind, x in parity_inputs(ckpt, n).items():
        with torch.inference_mode():
            p_ref = probabilities(model(torch.from_numpy(x)), ckpt.mode)
        # Batch 1 and the full batch: the dynamic batch axis must give the same answer.
        logits = np.concatenate([backend(x[:1]), backend(x[1:])]) if len(x) > 1 else backend(x)
        p_onnx = probabilities(torch.from_numpy(logits), ckpt.mode)
        a, b = labels_from_probabilities(p_ref, ckpt.mode), labels_from_probabilities(p_onnx, ckpt.mode)
        fg = int((a != 0).sum() + (b != 0).sum())
        per_kind[kind] = {"inputs": len(x), "max_abs_prob_diff": float((p_ref - p_onnx).abs().max()),
                          "same_labels": int((a == b).sum()), "pixels": int(a.numel()),
                          # Dice between the two label maps over lesion pixels: background dominates the match rate
                          "lesion_agreement": 2 * int(((a == b) & (a != 0)).sum()) / fg if fg else 1.0}
    calibrated_on = "dataset" if "dataset" in per_kind else "ct_phantom"  # as calibration_inputs chooses
    gated = {k: v for k, v in per_kind.items() if precision == "fp32" or k == calibrated_on}
    worst = max(v["max_abs_prob_diff"] for v in gated.values())
    rate = sum(v["same_labels"] for v in gated.values()) / sum(v["pixels"] for v in gated.values())
    agreement = min(v["lesion_agreement"] for v in gated.values())
    passed = (rate >= limits["min_label_match_rate"]
              and (limits["max_abs_prob_diff"] is None or worst <= limits["max_abs_prob_diff"])
              and (limits["min_lesion_agreement"] is None or agreement >= limits["min_lesion_agreement"]))
    for v in per_kind.values():
        v["label_match_rate"] = v.pop("same_labels") / v.pop("pixels")
    return {
        "passed": passed,
        "precision": precision,
        "max_abs_prob_diff": worst,
        "label_match_rate": rate,
        "lesion_agreement": agreement,
        "judged_on": sorted(gated),
        "num_inputs": sum(v["inputs"] for v in per_kind.values()),
        "by_input": per_kind,
        "thresholds": limits,
        "mode": ckpt.mode,
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
    }
