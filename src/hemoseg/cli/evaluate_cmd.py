"""`hemoseg evaluate RUN DATASET --split test`."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score a trained run on a dataset split",
                       description="Dice (pooled, per image, per class), IoU, precision, recall, HD95, "
                                   "image-level detection. Definitions: docs/metrics.md")
    p.add_argument("run", type=Path)
    p.add_argument("dataset", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path, help="output folder (default RUN/eval-SPLIT)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "auto"])
    p.add_argument("--pixel-spacing", type=float, help="mm per pixel, to report HD95 in mm")
    p.add_argument("--tta", action="store_true", help="average with the left-right flipped image, as predict --tta")
    p.add_argument("--group", metavar="REGEX",
                   help="patient key in each file name (its first group), e.g. '^(\\d+)_' for 0016_15.jpg: "
                        "confidence intervals then resample patients, not slices")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from hemoseg.evaluation.evaluate import evaluate

    out = args.out or args.run / f"eval-{args.split}"
    m = evaluate(args.run, args.dataset, args.split, out, args.backend, args.pixel_spacing, quiet=args.quiet,
                 tta=args.tta, group=args.group)
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    ci = m["ci95"]
    span = lambda iv: "" if iv is None else f" [{iv[0]:.3f}, {iv[1]:.3f}]"  # noqa: E731
    print(f"{args.split}: {m['num_images']} images | loss {m['loss']:.4f} | Dice pooled {fmt(m['dice_pooled_mean'])}"
          f"{span(ci['dice_pooled_mean'])} | per image {fmt(m['dice_per_image'])} | paper-style "
          f"{fmt(m['dice_paper_style'])} | IoU {fmt(m['iou_pooled_mean'])} | HD95 {fmt(m['hd95_px_mean'])} px")
    for name, c in m["per_class"].items():
        print(f"  {name:32s} Dice {fmt(c['dice'])}{span(ci['per_class'][name])}  IoU {fmt(c['iou'])}  "
              f"P {fmt(c['precision'])}  R {fmt(c['recall'])}  images {c['images_with_class']}")
    d = m["detection"]
    print(f"  any-lesion detection: sensitivity {fmt(d['sensitivity'])}{span(ci['detection']['sensitivity'])} "
          f"specificity {fmt(d['specificity'])}{span(ci['detection']['specificity'])}")
    print(f"  [95% bootstrap intervals over {ci['units']} {'images' if ci['unit'] == 'image' else 'groups'}"
          f"{'' if ci['unit'] == 'image' else ' (--group)'}; docs/metrics.md]")
    if m["skipped"]:
        print(f"  {len(m['skipped'])} items skipped: see {out / 'metrics.json'}")
    print(f"wrote {out}/metrics.json, per_image.csv" + (", best_cases.png, worst_cases.png" if (out / "best_cases.png").exists() else ""))
    json.dumps(m)
    return 0
