"""`hemoseg export RUN [--onnx FILE]`: ONNX for CPU workstations, with a parity check.

The Predictor's auto backend picks up RUN/model.onnx without asking, so an
export is only kept if ONNX Runtime reproduces PyTorch's probabilities and
labels on random and CT-like inputs; the numbers go to RUN/onnx_parity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from hemoseg.errors import HemosegError

# A correct export differs from PyTorch by float32 rounding (~1e-6); these
# bounds leave room for kernel differences but catch a wrong graph at once.
MAX_PROB_DIFF = 1e-3
MIN_LABEL_MATCH = 0.999
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hemoseg.inference.backends import ONNX_FILE, export_onnx
    from hemoseg.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.run)
    run_dir = args.run if args.run.is_dir() else args.run.parent
    out = args.onnx or run_dir / ONNX_FILE
    _check_writable(out)
    model = ckpt.build_model().eval()
    size = ckpt.preprocessing.size
    tmp = Path(out).with_suffix(".tmp.onnx")  # export_onnx's staging name
    t0 = time.perf_counter()
    try:
        export_onnx(model, size, out, opset=args.opset)
    except OSError as exc:
        raise HemosegError(f"cannot write ONNX file ({exc.strerror or exc})", out) from None
    finally:
        tmp.unlink(missing_ok=True)
    export_s = time.perf_counter() - t0
    _check_graph(out)

    report = parity_check(ckpt, model, out, args.samples)
    report.update(onnx_file=str(out), opset=args.opset, input_size=size, export_seconds=round(export_s, 2),
                  file_megabytes=round(out.stat().st_size / 1e6, 3))
    try:
        (run_dir / PARITY_FILE).write_text(json.dumps(report, indent=2))
        where = f"; details in {run_dir / PARITY_FILE}"
    except OSError as exc:
        where = f" (could not write {run_dir / PARITY_FILE}: {exc.strerror})"
    summary = (f"max |p_torch - p_onnx| = {report['max_abs_prob_diff']:.2e}, identical labels on "
               f"{100 * report['label_match_rate']:.4f}% of pixels over {report['num_inputs']} inputs")
    if not report["passed"]:
        out.unlink(missing_ok=True)  # never leave a wrong model where --backend auto would use it
        raise HemosegError(f"ONNX export does not reproduce PyTorch ({summary}); removed it{where}", out)
    print(f"wrote {out} ({report['file_megabytes']:.1f} MB, {size}x{size}, dynamic batch)")
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
    """Normalised (B,1,S,S) batches: Gaussian noise (stresses every activation),
    CT-like phantoms (skull ring, brain, a bright bleed: the intended input
    range), and up to n real images from the run's dataset if it is still there."""
    prep, size = ckpt.preprocessing, ckpt.preprocessing.size
    rng = np.random.default_rng(seed)
    inputs = {"random": rng.standard_normal((n, 1, size, size)).astype(np.float32)}
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    phantoms = []
    for _ in range(n):
        a, b = rng.uniform(0.30, 0.42, 2)
        r = (xx / a) ** 2 + (yy / b) ** 2
        img = np.where(r < 1, 90.0, 0.0) + np.where((r > 0.82) & (r < 1), 150.0, 0.0)
        cx, cy, rad = rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(0.03, 0.1)
        img += np.where((xx - cx) ** 2 + (yy - cy) ** 2 < rad ** 2, 60.0, 0.0)
        img += rng.normal(0, 6, img.shape)
        phantoms.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    inputs["ct_phantom"] = prep.normalize(np.stack(phantoms))[:, None]
    real = _real_images(ckpt, n)
    if real is not None:
        inputs["dataset"] = prep.normalize(real)[:, None]
    return inputs


def _real_images(ckpt, n: int) -> np.ndarray | None:
    """Best effort: the dataset may have moved since training; parity does not depend on it."""
    from hemoseg.data.coco import load_dataset
    from hemoseg.data.images import load_gray_uint8

    path = (ckpt.meta.get("data_summary") or {}).get("dataset")
    if not path or not os.path.exists(path):
        return None
    try:
        ds = load_dataset(path, check_files=False)
        split = ds.splits.get("valid") or ds.splits.get("train") or next(iter(ds.splits.values()))
        imgs = [ckpt.preprocessing.resize_image(load_gray_uint8(r.path)) for r in split.images[:n]]
    except (HemosegError, OSError, ValueError, StopIteration):
        return None
    return np.stack(imgs) if imgs else None


def parity_check(ckpt, model, onnx_path: Path, n: int = 8) -> dict:
    """Compare ONNX Runtime (the Predictor's OnnxBackend) with float32 PyTorch on CPU."""
    import onnxruntime
    import torch

    from hemoseg.inference.backends import OnnxBackend
    from hemoseg.models.heads import labels_from_probabilities, probabilities

    backend = OnnxBackend(onnx_path)
    model = model.cpu().eval()
    per_kind, worst, same, total = {}, 0.0, 0, 0
    for kind, x in parity_inputs(ckpt, n).items():
        with torch.inference_mode():
            p_ref = probabilities(model(torch.from_numpy(x)), ckpt.mode)
        # Batch 1 and the full batch: the dynamic batch axis must give the same answer.
        logits = np.concatenate([backend(x[:1]), backend(x[1:])]) if len(x) > 1 else backend(x)
        p_onnx = probabilities(torch.from_numpy(logits), ckpt.mode)
        diff = float((p_ref - p_onnx).abs().max())
        eq = int((labels_from_probabilities(p_ref, ckpt.mode) == labels_from_probabilities(p_onnx, ckpt.mode)).sum())
        n_pix = p_ref.shape[0] * p_ref.shape[2] * p_ref.shape[3]
        per_kind[kind] = {"inputs": len(x), "max_abs_prob_diff": diff, "label_match_rate": eq / n_pix}
        worst, same, total = max(worst, diff), same + eq, total + n_pix
    rate = same / total
    return {
        "passed": worst <= MAX_PROB_DIFF and rate >= MIN_LABEL_MATCH,
        "max_abs_prob_diff": worst,
        "label_match_rate": rate,
        "num_inputs": sum(v["inputs"] for v in per_kind.values()),
        "by_input": per_kind,
        "thresholds": {"max_abs_prob_diff": MAX_PROB_DIFF, "min_label_match_rate": MIN_LABEL_MATCH},
        "mode": ckpt.mode,
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
    }
