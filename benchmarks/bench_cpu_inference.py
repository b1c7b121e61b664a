#!/usr/bin/env python
"""Per-slice CPU inference latency: hemoseg PyTorch eager vs hemoseg ONNX Runtime
vs MONAI AttentionUnet PyTorch eager, same width, 256x256, batch 1 and 8.

Backs the claim "ONNX Runtime is >= 2x faster than PyTorch eager on a CPU
workstation", and shows which ONNX Runtime settings matter.

Method. Engines of one family share a child process and are measured
round-robin (each round: every engine, every batch size), so slow phases of a
shared machine hit all of them alike; the per-engine figure is the median
over rounds, the best of `--repeats` child runs. Torch and ONNX Runtime run in
separate children because ORT's spinning worker threads would steal the CPU
from a torch run right after them. A third child runs torch with
OMP_WAIT_POLICY=PASSIVE, which has to be set before torch is imported.

    python benchmarks/bench_cpu_inference.py            # 2-4 min on 2 idle cores, far longer on busy ones
    python benchmarks/bench_cpu_inference.py --width 64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "--child" in sys.argv and "passive" in sys.argv:  # must precede `import torch`
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

try:
    import hemoseg  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import torch

from hemoseg.inference.backends import cpu_threads


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=16, help="channels at level 1 (16 = 'fast', the CPU default)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds per child")
    p.add_argument("--min-seconds", type=float, default=0.5, help="per engine, batch size and round")
    p.add_argument("--repeats", type=int, default=1, help="child runs per family; best is kept")
    p.add_argument("--threads", help="comma list (default: all usable cores, and 1 if that is more)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--child", choices=["torch", "onnx", "passive"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- engines
def hemoseg_model(args):
    from hemoseg.models.attention_unet import build_model
    from hemoseg.models.config import ModelConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(in_channels=1, out_channels=args.classes + 1, width=args.width, depth=5))
    # Non-trivial BN statistics, as after training.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def monai_model(args):
    from monai.networks.nets import AttentionUnet

    torch.manual_seed(0)
    w = args.width
    return AttentionUnet(spatial_dims=2, in_channels=1, out_channels=args.classes + 1,
                         channels=(w, 2 * w, 4 * w, 8 * w, 16 * w), strides=(2, 2, 2, 2)).eval()


def fold_bn(module: torch.nn.Module) -> torch.nn.Module:
    """Fold each BatchNorm2d into the Conv2d right before it (what the ONNX export does)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        fold_bn(child)
    if isinstance(module, torch.nn.Sequential):
        mods = list(module)
        for i in range(len(mods) - 1):
            if isinstance(mods[i], torch.nn.Conv2d) and isinstance(mods[i + 1], torch.nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(mods[i], mods[i + 1])
                module[i + 1] = torch.nn.Identity()
    return module


def torch_engine(model, threads):
    @torch.inference_mode()
    def run(x):
        torch.set_num_threads(threads)
        return model(torch.from_numpy(x))
    return run


def onnx_engine(path, threads, level="all", spinning=True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def engines_for(family: str, args, threads: list[int], tmp: Path) -> dict:
    main_t = threads[0]
    out = {}
    if family in ("torch", "passive"):
        suffix = "_passive" if family == "passive" else ""
        h, m = hemoseg_model(args), monai_model(args)
        for t in threads:
            out[f"hemoseg_torch_eager{suffix}@{t}t"] = torch_engine(h, t)
            out[f"monai_torch_eager{suffix}@{t}t"] = torch_engine(m, t)
        if family == "torch":
            t = threads[-1]  # BN folding in eager mode, where timings are not dominated by thread stalls
            out[f"hemoseg_torch_eager_bn_folded@{t}t"] = torch_engine(fold_bn(hemoseg_model(args)), t)
        return out
    from hemoseg.inference.backends import OnnxBackend, export_onnx, quantize_onnx

    model = hemoseg_model(args)
    dyn = tmp / "model.onnx"
    export_onnx(model, args.size, dyn)  # what `hemoseg export` writes (BN folded by the exporter)
    for t in threads:
        out[f"hemoseg_onnx@{t}t"] = onnx_engine(dyn, t)
    int8 = tmp / "int8.onnx"  # what `hemoseg export --int8` writes; calibration content does not change speed
    quantize_onnx(dyn, int8, np.random.default_rng(0).standard_normal((8, 1, args.size, args.size), np.float32))
    for t in threads:
        out[f"hemoseg_onnx_int8@{t}t"] = onnx_engine(int8, t)
    backend = OnnxBackend(dyn)  # the Predictor's exact session settings
    out[f"hemoseg_onnx_predictor_backend@{cpu_threads()}t"] = backend
    out[f"hemoseg_onnx_no_spinning@{main_t}t"] = onnx_engine(dyn, main_t, spinning=False)
    out[f"hemoseg_onnx_opt_basic@{main_t}t"] = onnx_engine(dyn, main_t, "basic")
    out[f"hemoseg_onnx_opt_disabled@{main_t}t"] = onnx_engine(dyn, main_t, "disabled")
    # No BN folding at export (training-mode export keeps BN nodes; ORT has to fuse them itself).
    unfolded = tmp / "unfolded.onnx"
    x = torch.zeros(1, 1, args.size, args.size)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(unfolded), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE, dynamo=False)
    out[f"hemoseg_onnx_bn_unfolded_export@{main_t}t"] = onnx_engine(unfolded, main_t)
    out[f"hemoseg_onnx_bn_unfolded_export_opt_disabled@{main_t}t"] = onnx_engine(unfolded, main_t, "disabled")
    return out


def measure_child(args) -> dict:
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 1, args.size, args.size), dtype=np.float32) for b in batches}
    with tempfile.TemporaryDirectory() as tmp:
        engines = engines_for(args.child, args, threads, Path(tmp))
        samples = {(name, b): [] for name in engines for b in batches}
        cpu = {(name, b): [] for name in engines for b in batches}
        for name, fn in engines.items():  # warm-up: first calls allocate and pick kernels
            for b in batches:
                fn(inputs[b])
        for _ in range(args.rounds):
            for name, fn in engines.items():
                for b in batches:
                    x, times = inputs[b], []
                    fn(x)  # re-warm caches after the previous engine
                    t0, c0 = time.perf_counter(), time.process_time()
                    while len(times) < 2 or time.perf_counter() - t0 < args.min_seconds:
                        t = time.perf_counter()
                        fn(x)
                        times.append(time.perf_counter() - t)
                    samples[(name, b)].append(float(np.median(times)) / b * 1000)
                    cpu[(name, b)].append((time.process_time() - c0) / len(times) / b * 1000)
    out = {f"{name}|{b}|wall": float(np.median(v)) for (name, b), v in samples.items()}
    out.update({f"{name}|{b}|cpu": float(np.median(v)) for (name, b), v in cpu.items()})
    return out


# --------------------------------------------------------------------------- parent
def main(argv=None) -> int:
    args = parse_args(argv)
    cores = cpu_threads()
    if args.threads is None:
        args.threads = f"{cores},1" if cores > 1 else "1"
    if args.child:
        print("RESULT " + json.dumps(measure_child(args)))
        return 0
    raw, skip = [], False
    for a in (argv if argv is not None else sys.argv[1:]):
        if skip or a == "--out" or a.startswith("--out="):
            skip = a == "--out"
            continue
        raw.append(a)
    best: dict[str, float] = {}
    t_start = time.perf_counter()
    load = os.getloadavg()
    for rep in range(args.repeats):
        for family in ("torch", "onnx", "passive"):
            cmd = [sys.executable, __file__, *raw, "--threads", args.threads, "--child", family]
            p = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if p.returncode or line is None:
                print(f"[bench] {family}: FAILED: {p.stderr.strip().splitlines()[-1:] }", file=sys.stderr)
                continue
            for k, v in json.loads(line[7:]).items():
                best[k] = min(v, best.get(k, float("inf")))
            print(f"[bench] repeat {rep + 1} {family} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)

    results: dict[str, dict] = {}
    for key, ms in sorted(best.items()):
        name, b, kind = key.split("|")
        if kind == "wall":
            results.setdefault(name, {})[f"batch{b}_ms_per_slice"] = round(ms, 2)
            results[name][f"batch{b}_slices_per_s"] = round(1000 / ms, 2)
        else:
            results.setdefault(name, {})[f"batch{b}_cpu_ms_per_slice"] = round(ms, 2)
    speedups = {}
    for name, r in results.items():
        t = name.split("@")[1]
        ref = results.get(f"hemoseg_torch_eager@{t}") or results.get(f"hemoseg_torch_eager@{args.threads.split(',')[0]}t")
        if ref and not name.startswith("hemoseg_torch_eager@"):
            speedups[name] = {k.replace("_ms_per_slice", ""): round(ref[k] / r[k], 2)
                              for k in r if k.endswith("ms_per_slice")}
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = None
    import onnxruntime

    report = {
        "benchmark": "per-slice CPU inference latency (lower is better)",
        "settings": {"width": args.width, "size": args.size, "batches": args.batches, "classes": args.classes,
                     "rounds": args.rounds, "repeats": args.repeats, "threads": args.threads},
        "machine": {"cpu": cpu, "usable_cores": cores, "load_average_at_start": load,
                    "load_average_at_end": os.getloadavg(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__},
        "results": dict(sorted(results.items())),
        "speedup_vs_hemoseg_torch_eager_same_threads": dict(sorted(speedups.items())),
        "notes": "name@Nt = N intra-op threads. '_passive' = torch with OMP_WAIT_POLICY=PASSIVE. "
                 "hemoseg_onnx_predictor_backend = hemoseg.inference.backends.OnnxBackend as Predictor uses it. "
                 "ms_per_slice is wall-clock latency (median); cpu_ms_per_slice is process CPU time per slice, "
                 "which other jobs on the machine barely affect (with >1 thread it includes spin-waiting).",
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
