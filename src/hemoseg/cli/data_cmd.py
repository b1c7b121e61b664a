"""`hemoseg data check` and `hemoseg data stats`: look at an export before
training on it. Both only read the dataset."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hemoseg.errors import HemosegError


def register(sub):
    p = sub.add_parser("data", help="check a COCO export or summarise it",
                       description="Inspect a COCO segmentation export (read-only).")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    c = dsub.add_parser(
        "check", help="validate an export without modifying it",
        description="Validate a COCO export: annotation structure, ids, geometry, and a full decode of "
                    "every image. Prints one line per problem, then per-split counts. "
                    "Exit status: 0 clean, 1 warnings only, 2 errors.")
    c.add_argument("dataset", metavar="DATASET",
                   help="folder with train/valid/test splits, a single split folder, or a COCO .json file")
    c.set_defaults(func=_check)

    s = dsub.add_parser(
        "stats", help="class counts per split, and preview figures",
        description="Print per-class, per-split counts of annotations and of images containing each "
                    "class (and negatives). With --out, also write class_distribution.png, samples.png, "
                    "augmentations.png and stats.json there (existing files of these names are replaced).")
    s.add_argument("dataset", metavar="DATASET", help="dataset folder or COCO .json file")
    s.add_argument("--out", metavar="DIR", type=Path, help="folder for the figures and stats.json")
    s.add_argument("--seed", type=int, default=0, help="seed for sample choice and augmentation (default 0)")
    s.add_argument("--samples", type=int, default=12, metavar="N",
                   help="images in the preview grid (default 12)")
    s.add_argument("--scale", choices=("auto", "linear", "log"), default="auto",
                   help="y axis of the class-distribution chart; auto picks log when classes are "
                        "heavily imbalanced (default auto)")
    s.set_defaults(func=_stats)


def _check(args) -> int:
    from hemoseg.data.check import EXIT_ERRORS, check_dataset

    try:
        report = check_dataset(args.dataset)
    except HemosegError:
        raise
    except Exception as exc:  # a check must diagnose, never crash
        if os.environ.get("HEMOSEG_DEBUG"):
            raise
        print(f"hemoseg: error: {args.dataset}: check failed unexpectedly: {type(exc).__name__}: "
              f"{' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERRORS
    for line in report.lines():
        print(line)
    return report.exit_code


def _stats(args) -> int:
    from hemoseg.data import figures
    from hemoseg.data.check import plural
    from hemoseg.data.coco import load_dataset

    if args.samples < 0:
        raise HemosegError("--samples must be >= 0")
    ds = load_dataset(args.dataset)
    stats = figures.compute_stats(ds)
    print(figures.format_table(stats))
    errors, warnings = stats["problems"]["errors"], stats["problems"]["warnings"]
    if errors or warnings:
        print(f"note: {plural(errors, 'error')} and {plural(warnings, 'warning')} in the export; "
              f"items with errors are not counted (see 'hemoseg data check {args.dataset}')", file=sys.stderr)
    if args.out is None:
        return 0
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise HemosegError("--out exists and is not a folder", out)
    _refuse_inside(out, Path(args.dataset))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HemosegError(f"cannot create output folder ({exc.strerror})", out) from None
    classes = figures.dataset_classes(ds)
    stats["figures"] = {"seed": args.seed, "samples": args.samples}
    stats["figures"]["log_scale"] = figures.plot_class_distribution(
        stats, out / "class_distribution.png", args.scale)
    figures.plot_samples(ds, classes, out / "samples.png", args.samples, args.seed)
    figures.plot_augmentations(ds, classes, out / "augmentations.png", args.seed)
    figures.write_stats_json(stats, out / "stats.json")
    print(f"wrote {', '.join(figures.FIGURE_FILES)} to {out}")
    return 0


def _refuse_inside(out: Path, dataset: Path) -> None:
    """Figures must never land in the export itself (it is read-only input)."""
    root = dataset.resolve()
    if root.is_file():
        root = root.parent
    target = out.resolve()
    if target == root or root in target.parents:
        raise HemosegError("--out must not be inside the dataset folder", out)
