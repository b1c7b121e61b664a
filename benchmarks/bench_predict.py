#!/usr/bin/env python
"""End-to-end `hemoseg predict` time for one 32-slice 512x512 DICOM study.

Backs the target "one study, reading files to writing all outputs, <= 5 s on
2 CPU cores with the default (width 16) model" and says where the time goes:

* reading    discover + load_study (pydicom, HU conversion, slice ordering)
* inference  Predictor.predict_volume (window, resize, network, probability
             resampling to 512x512, argmax), ONNX Runtime and PyTorch eager
* writing    write_study (mask PNGs, overlays, montage, NIfTI, DICOM SEG,
             measurements, reports), split per output through timing wrappers
* cli        wall time of the real `hemoseg predict` in a subprocess, minus the
             start-up (interpreter + every import the command needs), which is
             reported separately
* monai      MONAI AttentionUnet (channels 16..256, PyTorch eager) on the same
             32 slices at 256x256, next to hemoseg's own network-only times

An untrained model labels (nearly) every pixel, which a real model never does,
and that changes what writing costs (measurements over the whole volume,
blending whole slices); writing is therefore timed twice: with the model's
labels and with the study's ground-truth labels (a stand-in for a good model),
which must reproduce the ground-truth voxel counts. Each engine family runs in
its own child process (ONNX Runtime's and OpenMP's worker threads would steal
the CPU from whatever runs right after them). Every figure is the median over
`--repeats` rounds, because a shared machine is noisy; CPU seconds (all
threads) are given beside wall time, as they barely depend on the load.
PyTorch is timed at the default thread count and at 1 thread (see README).

    python benchmarks/bench_predict.py                       # ~6-8 min on 2 busy cores
    python benchmarks/bench_predict.py --only pipeline cli   # ~2 min
    python benchmarks/bench_predict.py --model demo/run      # a trained synthetic-data run instead
    PYTHONPATH=/path/to/other/checkout/src python benchmarks/bench_predict.py  # compare code
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

try:
    import hemoseg  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

STUDY = "synth_001"
# What `hemoseg predict` imports before it touches a file; timed as start-up.
STARTUP_IMPORTS = ("import hemoseg.cli.main, hemoseg.cli.predict_cmd, hemoseg.inference.pipeline, "
                   "hemoseg.inference.predictor, hemoseg.inference.outputs, onnxruntime, pydicom, "
                   "highdicom, nibabel, cv2, scipy.ndimage, tqdm")


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def summary(xs: list[float]) -> dict:
    return {"median_s": med(xs), "min_s": round(min(xs), 4), "max_s": round(max(xs), 4), "n": len(xs)}


# --------------------------------------------------------------------------
# fixtures: synthetic study and an untrained width-16 run with model.onnx
# --------------------------------------------------------------------------
def hemoseg_cmd() -> list[str]:
    return [sys.executable, "-m", "hemoseg"]


def prepare(work: Path, width: int, size: int, stem: int, model: Path | None = None):
    """-> (data, run, width, size, stem); a given trained run brings its own geometry."""
    data, run = work / "synth", model or work / f"run_w{width}_{size}px_stem{stem}"
    study = data / "dicom" / STUDY
    if not study.is_dir():
        subprocess.run(hemoseg_cmd() + ["synth", str(data), "--studies", "1", "--train", "4",
                                        "--valid", "2", "--test", "2", "--force"], check=True,
                       stdout=subprocess.DEVNULL)
    if model is not None:
        from hemoseg.data.synth import CLASS_NAMES
        from hemoseg.training.checkpoint import load_checkpoint

        if not (model / "model.onnx").is_file():
            sys.exit(f"bench_predict: {model}: no model.onnx (run 'hemoseg export {model}' first)")
        ckpt = load_checkpoint(model, weights=False)
        names = list(ckpt.classes.names)
        if names != [CLASS_NAMES[k] for k in sorted(CLASS_NAMES)]:
            sys.exit(f"bench_predict: {model}: not trained on hemoseg's synthetic classes ({names})")
        return data, model, ckpt.model_config.width, ckpt.preprocessing.size, ckpt.model_config.stem
    if not (run / "model.onnx").is_file():
        import torch

        from hemoseg.data.coco import ClassList
        from hemoseg.data.preprocessing import Preprocessing
        from hemoseg.data.rasterize import num_outputs
        from hemoseg.data.synth import CLASS_NAMES
        from hemoseg.models.attention_unet import build_model
        from hemoseg.models.config import ModelConfig
        from hemoseg.training.checkpoint import save_checkpoint

        torch.manual_seed(0)
        ids = sorted(CLASS_NAMES)
        classes = ClassList(tuple(CLASS_NAMES[k] for k in ids), tuple(ids))
        mcfg = ModelConfig(in_channels=1, out_channels=num_outputs("multiclass", len(classes)),
                           width=width, depth=5, attention=True, stem=stem)
        run.mkdir(parents=True, exist_ok=True)
        save_checkpoint(run / "best.safetensors", build_model(mcfg).state_dict(), mcfg, classes,
                        "multiclass", Preprocessing(size=size), {"epoch": 0, "note": "untrained"})
        subprocess.run(hemoseg_cmd() + ["export", str(run), "--samples", "2"], check=True,
                       stdout=subprocess.DEVNULL)
    return data, run, width, size, stem


def truth_labels(data: Path):
    """Ground-truth (Z,H,W) labels in the study's slice order (inferior first)."""
    import nibabel as nib
    import numpy as np

    return np.asarray(nib.load(str(data / "dicom" / f"{STUDY}_labels.nii.gz")).dataobj, np.uint8)


# --------------------------------------------------------------------------
# child: read -> ONNX inference -> write, as `hemoseg predict` does it
# --------------------------------------------------------------------------
WRITE_PARTS = {  # module attribute -> reported name
    ("outputs", "display_volume"): "display",
    ("outputs", "write_mask_pngs"): "masks",
    ("outputs", "write_overlays"): "overlays",
    ("outputs", "write_montage"): "montage",
    ("outputs", "write_nifti"): "nifti",
    ("outputs", "write_dicom_seg"): "dicom_seg",
    ("pipeline", "measure"): "measure",
    ("reporting", "write_report"): "reports",
}


def instrument_writers(parts: dict[str, float]) -> None:
    """Wrap each output writer so write_study's time can be split per output."""
    from hemoseg.inference import outputs, pipeline, report as reporting

    mods = {"outputs": outputs, "pipeline": pipeline, "reporting": reporting}
    for (mod, attr), name in WRITE_PARTS.items():
        fn = getattr(mods[mod], attr)

        def timed(*a, _fn=fn, _name=name, **kw):
            t = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                parts[_name] = parts.get(_name, 0.0) + time.perf_counter() - t

        setattr(mods[mod], attr, timed)  # write_study looks them up at call time


def child_pipeline(args) -> dict:
    import numpy as np

    from hemoseg.inference import pipeline
    from hemoseg.inference.predictor import Predictor
    from hemoseg.inference.readers import discover, load_study

    data, run = Path(args.data), Path(args.run)
    study_dir = data / "dicom" / STUDY
    out_root = Path(args.work) / "out_stages"
    parts: dict[str, float] = {}
    instrument_writers(parts)

    t = time.perf_counter()
    pred = Predictor.from_run(run, backend="onnx")
    load_model = time.perf_counter() - t
    truth = truth_labels(data)
    res = {k: [] for k in ("read", "inference_onnx", "write_model", "write_truth",
                           "total_model", "total_truth")}
    cpu = {k: [] for k in ("read", "inference_onnx", "write_model", "write_truth")}
    split = {"model": {}, "truth": {}}
    for r in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        items, problems = discover([study_dir])
        assert not problems and len(items) == 1, problems
        study = load_study(items[0])
        t1, c1 = time.perf_counter(), time.process_time()
        labels = pipeline.predict_labels(pred, study)
        t2, c2 = time.perf_counter(), time.process_time()
        for kind, labs in (("model", labels), ("truth", truth)):
            folder = out_root / f"{kind}_{r}"
            shutil.rmtree(folder, ignore_errors=True)
            parts.clear()
            t3, c3 = time.perf_counter(), time.process_time()
            rep = pipeline.write_study(study, labs, pred.class_names, pred.preprocessing, folder,
                                       model={"run": str(run), "backend": "onnx"})
            dt = time.perf_counter() - t3
            cpu[f"write_{kind}"].append(time.process_time() - c3)
            res[f"write_{kind}"].append(dt)
            res[f"total_{kind}"].append(t2 - t0 + dt)
            for k, v in parts.items():
                split[kind].setdefault(k, []).append(v)
            if kind == "truth" and r == 0:
                gt = json.loads((data / "dicom" / "ground_truth.json").read_text())[STUDY]
                got = {c["class"]: c["voxels"] for c in rep["classes"]}
                assert got == gt["voxels"], (got, gt["voxels"])  # truth labels line up
                n_files = sum(1 for p in folder.rglob("*") if p.is_file())
        res["read"].append(t1 - t0)
        res["inference_onnx"].append(t2 - t1)
        cpu["read"].append(c1 - c0)
        cpu["inference_onnx"].append(c2 - c1)
    shutil.rmtree(out_root, ignore_errors=True)
    return {
        "load_model_s": round(load_model, 4),
        "stages": {k: summary(v) for k, v in res.items()},
        # the first round of a fresh process pays one-time costs (ONNX Runtime's
        # first run, highdicom loading its DICOM-standard tables, font loading)
        "first_round_s": {k: round(v[0], 4) for k, v in res.items()},
        # CPU seconds (all threads): what the stage costs however loaded the machine is
        "stages_cpu_median_s": {k: med(v) for k, v in cpu.items()},
        "write_split_median_s": {kind: {k: med(v) for k, v in d.items()} for kind, d in split.items()},
        "files_written": n_files,
        "labelled_fraction": {"model": round(float(np.mean(labels > 0)), 4),
                              "truth": round(float(np.mean(truth > 0)), 4)},
    }


# --------------------------------------------------------------------------
# child: PyTorch eager, hemoseg and MONAI, plus ONNX network-only
# --------------------------------------------------------------------------
def child_torch(args) -> dict:
    import numpy as np
    import torch

    from hemoseg.inference.backends import cpu_threads
    from hemoseg.inference.predictor import Predictor
    from hemoseg.inference.readers import discover, load_study

    torch.set_num_threads(cpu_threads())
    items, _ = discover([Path(args.data) / "dicom" / STUDY])
    study = load_study(items[0])
    pred = Predictor.from_run(Path(args.run), backend="torch", device="cpu")
    prep = pred.preprocessing
    display = pred.to_display(study.pixels, study.is_hu)
    x = prep.normalize(np.stack([prep.resize_image(s) for s in display]))  # (Z, C, S, S)
    bs = pred.batch_size

    from monai.networks.nets import AttentionUnet

    w = args.width
    monai_net = AttentionUnet(spatial_dims=2, in_channels=x.shape[1], out_channels=len(pred.class_names) + 1,
                              channels=tuple(w * 2 ** i for i in range(5)), strides=(2, 2, 2, 2)).eval()

    @torch.inference_mode()
    def monai_forward():
        for s in range(0, len(x), bs):
            monai_net(torch.from_numpy(x[s:s + bs]))

    def hemoseg_forward():
        for s in range(0, len(x), bs):
            pred.backend(x[s:s + bs])

    engines = {"monai_eager_network": monai_forward, "hemoseg_eager_network": hemoseg_forward,
               "hemoseg_eager_predict_volume": lambda: pred.predict_volume(study)}
    times, cpu = {}, {}
    # PyTorch at its default thread count collapses when another process holds
    # a core (GNU OpenMP barriers), so 1 thread is measured as well.
    for threads in sorted({cpu_threads(), 1}, reverse=True):
        torch.set_num_threads(threads)
        for fn in engines.values():  # warm-up: first calls allocate and pick kernels
            fn()
        for _ in range(args.repeats):  # round-robin, so load swings hit every engine alike
            for k, fn in engines.items():
                t, c = time.perf_counter(), time.process_time()
                fn()
                times.setdefault(f"{k}_{threads}t", []).append(time.perf_counter() - t)
                cpu.setdefault(f"{k}_{threads}t", []).append(time.process_time() - c)
    params = {"monai": sum(p.numel() for p in monai_net.parameters()),
              "hemoseg": sum(p.numel() for p in pred.backend.model.parameters())}
    return {"times": {k: summary(v) for k, v in times.items()},
            "cpu_median_s": {k: med(v) for k, v in cpu.items()}, "params": params,
            "batch_size": bs, "slices": int(len(x)), "input": list(x.shape[1:])}


def child_onnx_network(args) -> dict:
    import numpy as np

    from hemoseg.inference.predictor import Predictor
    from hemoseg.inference.readers import discover, load_study

    items, _ = discover([Path(args.data) / "dicom" / STUDY])
    study = load_study(items[0])
    pred = Predictor.from_run(Path(args.run), backend="onnx")
    prep = pred.preprocessing
    display = pred.to_display(study.pixels, study.is_hu)
    x = prep.normalize(np.stack([prep.resize_image(s) for s in display]))  # (Z, C, S, S)
    bs = pred.batch_size

    def forward():
        for s in range(0, len(x), bs):
            pred.backend(x[s:s + bs])

    forward()
    ts, cs = [], []
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        forward()
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    return {"times": {"hemoseg_onnx_network": summary(ts)},
            "cpu_median_s": {"hemoseg_onnx_network": med(cs)}}


# --------------------------------------------------------------------------
# the real CLI
# --------------------------------------------------------------------------
def cli_times(data: Path, run: Path, work: Path, repeats: int) -> dict:
    out = work / "out_cli"
    study = data / "dicom" / STUDY
    env = dict(os.environ, HEMOSEG_DEBUG="1")
    def child_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    startup, total, startup_cpu, total_cpu = [], [], [], []
    for _ in range(repeats):  # alternate, so both see the same load
        t, c = time.perf_counter(), child_cpu()
        subprocess.run([sys.executable, "-c", STARTUP_IMPORTS], check=True, env=env)
        startup.append(time.perf_counter() - t)
        startup_cpu.append(child_cpu() - c)
        t, c = time.perf_counter(), child_cpu()
        subprocess.run(hemoseg_cmd() + ["predict", str(run), str(study), "--out", str(out),
                                        "--force"], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total.append(time.perf_counter() - t)
        total_cpu.append(child_cpu() - c)
    shutil.rmtree(out, ignore_errors=True)
    work_s = [a - b for a, b in zip(total, startup)]
    return {"cli_total": summary(total), "startup_imports": summary(startup),
            "cli_minus_startup": summary(work_s),
            "cpu_median_s": {"cli_total": med(total_cpu), "startup_imports": med(startup_cpu)}}


def run_child(kind: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--data", str(args.data), "--run",
           str(args.run), "--work", str(args.work), "--repeats", str(args.repeats),
           "--width", str(args.width)]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/hemoseg-bench-predict"),
                    help="scratch folder: synthetic study, untrained run, outputs")
    ap.add_argument("--repeats", type=int, default=5, help="rounds per measurement (median reported)")
    ap.add_argument("--width", type=int, default=16, help="network width (16 = default model)")
    ap.add_argument("--size", type=int, default=512, help="model input size (default preset: 512)")
    ap.add_argument("--stem", type=int, default=2, help="pooling stem (default preset: 2, so the network runs at 256)")
    ap.add_argument("--only", nargs="*", default=["pipeline", "onnx", "torch", "cli"],
                    choices=["pipeline", "onnx", "torch", "cli"])
    ap.add_argument("--model", type=Path, help="a trained run on hemoseg's synthetic classes, with "
                    "model.onnx (default: an untrained model, which labels nearly every pixel)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        fn = {"pipeline": child_pipeline, "torch": child_torch, "onnx": child_onnx_network}[args.child]
        print(json.dumps(fn(args)))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    args.data, args.run, args.width, args.size, args.stem = prepare(args.work, args.width, args.size,
                                                                    args.stem, args.model)
    import platform

    result = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "processor": platform.processor() or
                    platform.machine(), "load_avg_before": [round(v, 2) for v in os.getloadavg()]},
        "study": "32 slices 512x512 synthetic DICOM", "model": str(args.model or "untrained"),
        "width": args.width, "size": args.size, "stem": args.stem,
        "repeats": args.repeats,
    }
    if "pipeline" in args.only:
        result["pipeline"] = run_child("pipeline", args)
    if "onnx" in args.only:
        result["onnx_network"] = run_child("onnx", args)
    if "torch" in args.only:
        result["torch"] = run_child("torch", args)
    if "cli" in args.only:
        result["cli"] = cli_times(args.data, args.run, args.work, args.repeats)
    result["machine"]["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
