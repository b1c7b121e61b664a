#!/usr/bin/env python
"""hemoseg's AttentionUNet vs MONAI's AttentionUnet, measured in one run under
identical conditions: same width, input size, data, augmentation, loader,
loss, optimizer, precision and compile settings.

Each measurement runs in a fresh child process, so peak memory is that job's
alone (on CPU ru_maxrss cannot be reset) and one model's allocator/compile
state cannot help or hurt the other. Prints one JSON document.

    python benchmarks/bench_models.py                     # CPU defaults: ~1-2 min on 2 cores
    python benchmarks/bench_models.py --device cuda --amp # GPU defaults: width 64, 256x256, batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import hemoseg  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import torch

CPU_DEFAULTS = dict(width=16, size=128, batch=8, infer_batch=32, steps=4, workers=0, min_seconds=2.0, augment="loader")
GPU_DEFAULTS = dict(width=64, size=256, batch=16, infer_batch=32, steps=60, workers=8, min_seconds=1.0,
                    augment="device")
JOBS = ["hemoseg:train", "monai:train", "hemoseg:infer", "monai:infer", "hemoseg:onnx"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument("--width", type=int, help="channels at level 1 (CPU 16, GPU 64)")
    p.add_argument("--size", type=int, help="input side (CPU 128, GPU 256); a multiple of 16")
    p.add_argument("--batch", type=int, help="training batch (CPU 8, GPU 16)")
    p.add_argument("--infer-batch", type=int, help="large inference batch (default 32)")
    p.add_argument("--steps", type=int, help="timed training steps (CPU 4, GPU 60)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile, allocator, cuDNN autotune)")
    p.add_argument("--min-seconds", type=float, help="time each inference batch size at least this long")
    p.add_argument("--classes", type=int, default=5, help="foreground classes; the head has classes+1 outputs")
    p.add_argument("--workers", type=int, help="DataLoader workers for --augment loader (CPU 0, GPU 8)")
    p.add_argument("--augment", choices=["loader", "device"],
                   help="albumentations per sample in a DataLoader, or batched on the device (CPU loader, GPU device)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast + channels_last (CUDA, or a CPU with native bf16)")
    p.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile both models (MODE: default, reduce-overhead = CUDA graphs, max-autotune)")
    p.add_argument("--threads", type=int, help="CPU intra-op threads for torch and ONNX Runtime (default: all cores)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime (CPU) measurement")
    p.add_argument("--jobs", default=",".join(JOBS), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    defaults = GPU_DEFAULTS if args.device.startswith("cuda") else CPU_DEFAULTS
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.size % 16:
        p.error("--size must be a multiple of 16 (four 2x downsamplings)")
    return args


# --------------------------------------------------------------------------- models and data
def build(name: str, args) -> torch.nn.Module:
    out = args.classes + 1
    w = args.width
    if name == "hemoseg":
        from hemoseg.models.attention_unet import build_model
        from hemoseg.models.config import ModelConfig

        return build_model(ModelConfig(in_channels=1, out_channels=out, width=w, depth=5, attention=True))
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(spatial_dims=2, in_channels=1, out_channels=out, channels=(w, 2 * w, 4 * w, 8 * w, 16 * w),
                         strides=(2, 2, 2, 2))


def fake_cache(args, n: int):
    """Head-CT-like uint8 slices (skull ring, brain, noise) with 1-3 lesion blobs each,
    so augmentation and the Dice term do real work."""
    from hemoseg.data.dataset import CachedSplit

    rng = np.random.default_rng(0)
    s = args.size
    yy, xx = np.mgrid[:s, :s] / s - 0.5
    images = np.empty((n, s, s), np.uint8)
    targets = np.zeros((n, s, s), np.uint8)
    for i in range(n):
        a, b = rng.uniform(0.3, 0.42, 2)
        r = (xx / a) ** 2 + (yy / b) ** 2
        img = np.where(r < 1, 90.0, 0.0) + np.where((r > 0.82) & (r < 1), 150.0, 0.0) + rng.normal(0, 8, (s, s))
        for _ in range(rng.integers(1, 4)):
            cx, cy, rad = *rng.uniform(-0.2, 0.2, 2), rng.uniform(0.02, 0.08)
            blob = (xx - cx) ** 2 + (yy - cy) ** 2 < rad ** 2
            img[blob] += 50
            targets[i][blob] = rng.integers(1, args.classes + 1)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return CachedSplit("bench", images, targets, [f"{i}.png" for i in range(n)], "multiclass")


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 2**10  # bytes on macOS, KiB on Linux


class Memory:
    """Peak memory of the block: CUDA allocator peak on GPU, RSS growth over the
    pre-block level on CPU (plus the whole process's peak RSS for context)."""

    def __init__(self, dev: torch.device):
        self.dev = dev

    def __enter__(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
        self.base = rss_mb()
        return self

    def __exit__(self, *exc):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            self.result = {"peak_mem_mb": round(torch.cuda.max_memory_allocated(self.dev) / 2**20, 1),
                           "peak_mem_kind": "torch.cuda.max_memory_allocated"}
        else:
            peak = peak_rss_mb()
            self.result = {"peak_mem_mb": round(peak - self.base, 1), "process_peak_rss_mb": round(peak, 1),
                           "peak_mem_kind": "peak RSS increase over the pre-run level (ru_maxrss)"}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# --------------------------------------------------------------------------- jobs (child processes)
def job_train(name: str, args) -> dict:
    from torch.utils.data import DataLoader

    from hemoseg.data.augment import POLICIES, build_augmentation
    from hemoseg.data.dataset import SegmentationDataset
    from hemoseg.data.device_augment import DeviceAugment
    from hemoseg.data.preprocessing import Preprocessing
    from hemoseg.training.losses import SegmentationLoss
    from hemoseg.training.precision import native_bf16

    dev = torch.device(args.device)
    use_amp = args.amp and native_bf16(dev)
    torch.manual_seed(0)
    cache = fake_cache(args, max(16 * args.batch, 32))  # many batches per epoch: workers stay busy
    prep = Preprocessing(size=args.size, mean=0.25, std=0.3)
    if args.augment == "device":
        augment = DeviceAugment(cache, prep, POLICIES["default"], None, dev)
        keys = torch.Generator().manual_seed(0)

        def batches():
            while True:
                idx = torch.randint(0, len(cache), (args.batch,), generator=keys).tolist()
                seeds = torch.randint(0, 2**31 - 1, (args.batch,), generator=keys).tolist()
                yield augment(list(zip(idx, seeds)))
    else:
        ds = SegmentationDataset(cache, prep, build_augmentation("default", 0))
        loader = DataLoader(ds, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
                            pin_memory=dev.type == "cuda", persistent_workers=args.workers > 0)

        def batches():
            while True:
                yield from loader
    model = build(name, args).to(dev).train()
    params = sum(p.numel() for p in model.parameters())
    if use_amp:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model, mode=args.compile) if args.compile else model
    loss_fn = SegmentationLoss("multiclass", args.classes).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **({"fused": True} if dev.type == "cuda" else {}))
    it = batches()
    data_s = 0.0

    def step() -> None:
        nonlocal data_s
        t = time.perf_counter()
        x, y = next(it)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if use_amp:
            x = x.contiguous(memory_format=torch.channels_last)
        data_s += time.perf_counter() - t
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = fwd(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with Memory(dev) as mem:
        for _ in range(args.warmup):
            step()
        sync(dev)
        data_s = 0.0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(dev)
        dt = time.perf_counter() - t0
    return {"parameters": params, "train_images_per_s": round(args.steps * args.batch / dt, 2),
            "train_data_wait_fraction": round(data_s / dt, 3), **{f"train_{k}": v for k, v in mem.result.items()}}


def time_inference(fn, make_input, batch: int, min_seconds: float, dev) -> float:
    x = make_input(batch)
    for _ in range(2):
        fn(x)
    sync(dev)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < min_seconds:
        fn(x)
        n += 1
        sync(dev)
    return n * batch / (time.perf_counter() - t0)


def job_infer(name: str, args) -> dict:
    from hemoseg.training.precision import native_bf16

    dev = torch.device(args.device)
    use_amp = args.amp and native_bf16(dev)
    torch.manual_seed(0)
    model = build(name, args).to(dev).eval()
    params = sum(p.numel() for p in model.parameters())
    if use_amp:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model, mode=args.compile) if args.compile else model

    def make_input(b):
        x = torch.randn(b, 1, args.size, args.size, device=dev)
        return x.contiguous(memory_format=torch.channels_last) if use_amp else x

    @torch.inference_mode()
    def run(x):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            return fwd(x)

    out = {"parameters": params}
    ips1 = time_inference(run, make_input, 1, args.min_seconds, dev)
    with Memory(dev) as mem:
        ipsn = time_inference(run, make_input, args.infer_batch, args.min_seconds, dev)
    out.update({"infer_b1_images_per_s": round(ips1, 2), f"infer_b{args.infer_batch}_images_per_s": round(ipsn, 2),
                **{f"infer_b{args.infer_batch}_{k}": v for k, v in mem.result.items()}})
    return out


def job_onnx(args) -> dict:
    from hemoseg.inference.backends import OnnxBackend, cpu_threads, export_onnx

    torch.manual_seed(0)
    model = build("hemoseg", args).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, args.size, path)
        backend = OnnxBackend(path)
        if args.threads:  # same session options, other thread count
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            backend.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        cpu = torch.device("cpu")
        mk = lambda b: np.random.default_rng(0).standard_normal((b, 1, args.size, args.size), dtype=np.float32)  # noqa: E731
        ips1 = time_inference(backend, mk, 1, args.min_seconds, cpu)
        with Memory(cpu) as mem:
            ipsn = time_inference(backend, mk, args.infer_batch, args.min_seconds, cpu)
    return {"provider": "CPUExecutionProvider", "threads": args.threads or cpu_threads(), "infer_b1_images_per_s": round(ips1, 2),
            f"infer_b{args.infer_batch}_images_per_s": round(ipsn, 2),
            **{f"infer_b{args.infer_batch}_{k}": v for k, v in mem.result.items()}}


def run_job(job: str, args) -> dict:
    name, kind = job.split(":")
    torch.backends.cudnn.benchmark = True  # both models: fixed shapes, fastest kernels
    if args.threads:
        torch.set_num_threads(args.threads)
    if kind == "train":
        return job_train(name, args)
    if kind == "infer":
        return job_infer(name, args)
    return job_onnx(args)


# --------------------------------------------------------------------------- parent
def machine(args) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": args.threads or torch.get_num_threads(), "load_average_at_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    for mod in ("monai", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


def ratios(h: dict, m: dict) -> dict:
    out = {}
    for k, v in h.items():
        mv = m.get(k)
        if isinstance(v, (int, float)) and isinstance(mv, (int, float)) and mv and not isinstance(v, bool) \
                and (k.endswith("images_per_s") or k.endswith("peak_mem_mb") or k == "parameters"):
            out[k] = round(v / mv, 3)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.job:
        print("RESULT " + json.dumps(run_job(args.job, args)))
        return 0
    jobs = [j for j in args.jobs.split(",") if not (args.no_onnx and j.endswith(":onnx"))]
    passthrough, skip = [], False
    for a in (argv if argv is not None else sys.argv[1:]):
        if skip or a == "--out" or a.startswith("--out="):
            skip = a == "--out"
            continue
        passthrough.append(a)
    report = {"benchmark": "hemoseg AttentionUNet vs monai.networks.nets.AttentionUnet",
              "settings": {k: getattr(args, k) for k in ("device", "width", "size", "batch", "infer_batch", "steps",
                                                         "warmup", "min_seconds", "classes", "workers", "augment", "amp",
                                                         "compile", "threads")},
              "machine": machine(args), "results": {}}
    t0 = time.perf_counter()
    for job in jobs:
        cmd = [sys.executable, __file__, *passthrough, "--device", args.device, "--job", job]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if p.returncode or line is None:
            err = " ".join(p.stderr.strip().splitlines()[-1:]) or f"exit {p.returncode}"
            report["results"].setdefault(job.split(":")[0], {})[f"{job.split(':')[1]}_error"] = err
            print(f"[bench] {job}: FAILED: {err}", file=sys.stderr)
            continue
        res = json.loads(line[7:])
        key = "hemoseg_onnxruntime_cpu" if job.endswith(":onnx") else job.split(":")[0]
        report["results"].setdefault(key, {}).update(res)
        print(f"[bench] {job}: {res}", file=sys.stderr)
    r = report["results"]
    if "hemoseg" in r and "monai" in r:
        report["ratios_hemoseg_over_monai"] = ratios(r["hemoseg"], r["monai"])
    if "hemoseg_onnxruntime_cpu" in r and "hemoseg" in r and args.device == "cpu":
        o, h = r["hemoseg_onnxruntime_cpu"], r["hemoseg"]
        report["ratios_onnx_over_torch_cpu"] = {k: round(o[k] / h[k], 3) for k in o
                                                if k.endswith("images_per_s") and h.get(k)}
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
