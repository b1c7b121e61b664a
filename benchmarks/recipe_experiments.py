"""Recipe experiments on a real dataset: train each variant, score on VALIDATION only.

Usage:
  python benchmarks/recipe_experiments.py ../shared/data/phe-dev-coco --out scratch/recipes \
      --size 128 --width 16 --epochs 8 [--only NAME ...]

Every variant sees the same number of training images (epochs x steps x batch),
so the comparison is at equal compute. Prints one JSON line per variant and a
final table; results are also written to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hemoseg.training.config import PRESETS
from hemoseg.training.trainer import Trainer

VARIANTS = {
    # the study's recipe at the same width/size/compute
    "paper": dict(preset="paper"),
    "default": dict(preset="default"),
    "default-no-oversampling": dict(preset="default", foreground_fraction=0.0),
    "default-lr5e-4": dict(preset="default", lr=5e-4),
    "default-bce-binary": dict(preset="default", mode="binary", loss="bce_dice"),
    "default-no-attention": dict(preset="default", attention=False),
    "paper-lr-only": dict(preset="paper", lr=2e-3, schedule="cosine", warmup=0.05),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    results = {}
    res_path = a.out / "results.json"
    if res_path.exists():
        results = json.loads(res_path.read_text())
    for name, v in VARIANTS.items():
        if a.only and name not in a.only:
            continue
        v = dict(v)
        cfg = PRESETS[v.pop("preset")].override(size=a.size, width=a.width, epochs=a.epochs,
                                               batch_size=a.batch_size, seed=a.seed, **v)
        t = time.perf_counter()
        s = Trainer(a.dataset, a.out / name, cfg, force=True, quiet=True).run()
        results[name] = {"best_val_dice": round(s["best_val_dice"], 4), "best_epoch": s["best_epoch"],
                         "seconds": round(time.perf_counter() - t, 1), "config": cfg.to_dict()}
        print(json.dumps({name: {k: results[name][k] for k in ("best_val_dice", "best_epoch", "seconds")}}), flush=True)
        a.out.mkdir(parents=True, exist_ok=True)
        res_path.write_text(json.dumps(results, indent=2))
    for name, r in results.items():
        print(f"{name:28s} val Dice {r['best_val_dice']:.4f}  best epoch {r['best_epoch']}  {r['seconds']:.0f}s")


if __name__ == "__main__":
    main()
