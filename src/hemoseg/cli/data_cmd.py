"""`hemoseg data check` and `hemoseg data stats`: look at an export before training on
it (both only read the dataset); `hemoseg data from-nifti` and `from-dicom`: make one
from CT volumes with label volumes or DICOM SEG (data/from_volumes.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hemoseg.cli import argtypes
from hemoseg.errors import HemosegError


def register(sub):
    p = sub.add_parser("data", help="check or summarise a COCO export, or make one from NIfTI or DICOM + SEG",
                       description="Inspect a COCO segmentation export (read-only), or make one from CT "
                                   "volumes with label volumes or DICOM SEG.")
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

    common = ("into train/valid/test COCO splits. Split by patient (one volume or series each), seeded; "
              "slices windowed as 'predict' windows DICOM; masks as exact RLE. A pair that cannot be "
              "converted is reported and skipped (exit status 1); the inputs are only read.")
    sources = {
        "from-nifti": ("nifti", "CT + label volumes (NIfTI) -> a COCO export to train on",
                       "Convert IMAGES/<name>.nii[.gz] CT volumes (Hounsfield units) with LABELS/<name>.nii[.gz] "
                       "label volumes, as public hemorrhage datasets ship them, " + common,
                       ("images", "IMAGES", "folder of CT volumes"),
                       ("labels", "LABELS", "folder of label volumes, same file names"),
                       "label value = class name, e.g. '1=Epidural hemorrhage,2=Intraparenchymal hemorrhage'"),
        "from-dicom": ("dicom", "DICOM series + DICOM SEG annotations -> a COCO export to train on",
                       "Convert the DICOM series under SERIES (one folder each, named as 'predict' names "
                       "studies) with SEGS/<name>.dcm, the DICOM SEG a reader drew on that series in OHIF "
                       "or 3D Slicer, " + common,
                       ("images", "SERIES", "folder of DICOM series, one subfolder each"),
                       ("labels", "SEGS", "folder of DICOM SEG files named after the series folders"),
                       "category id = segment label, e.g. '1=Epidural hemorrhage,2=Intraparenchymal hemorrhage' "
                       "(segments are matched by their labels)"),
    }
    for command, (source, summary, description, images, labels, classes_help) in sources.items():
        v = dsub.add_parser(command, help=summary, description=description)
        for dest, metavar, text in (images, labels):
            v.add_argument(dest, type=Path, metavar=metavar, help=text)
        v.add_argument("--out", type=Path, required=True, metavar="DIR", help="new dataset folder")
        v.add_argument("--classes", required=True, metavar="V=NAME,...", help=classes_help)
        v.add_argument("--windows", default="brain", metavar="W[,W,W]",
                       help="one window (gray PNG) or three (one per R, G, B): names or L/W pairs (default brain)")
        v.add_argument("--valid", type=float, default=0.1, help="share of patients for validation (default 0.1)")
        v.add_argument("--test", type=float, default=0.1, help="share of patients for test (default 0.1)")
        v.add_argument("--negatives", type=float, default=0.25,
                       help="share of label-free slices through the head to keep (default 0.25)")
        v.add_argument("--seed", type=int, default=0, help="seed for the split and the negatives (default 0)")
        v.add_argument("--force", action="store_true", help="replace --out if it exists")
        v.set_defaults(func=_convert_volumes, source=source)


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


def _convert_volumes(args) -> int:
    from hemoseg.data.from_volumes import convert, summary_lines
    from hemoseg.data.preprocessing import parse_windows

    try:
        windows = parse_windows(args.windows)
    except ValueError as exc:
        raise HemosegError(f"--windows: {exc}") from None
    for folder in (args.images, args.labels):
        _refuse_inside(args.out, folder)
    result = convert(args.images, args.labels, args.out, argtypes.parse_classes(args.classes), windows,
                     source=args.source, valid=args.valid, test=args.test, negatives=args.negatives, seed=args.seed,
                     force=args.force)
    for line in result.skipped:
        print(f"hemoseg: skipped: {line}", file=sys.stderr)
    if not any(result.volumes.values()):
        raise HemosegError(f"no volume could be converted ({len(result.skipped)} skipped); nothing written",
                           args.images)
    for line in summary_lines(result, windows):
        print(line)
    return 1 if result.skipped else 0


def _refuse_inside(out: Path, dataset: Path) -> None:
    """Outputs must never land inside an input folder (inputs are only read)."""
    root = dataset.resolve()
    if root.is_file():
        root = root.parent
    target = out.resolve()
    if target == root or root in target.parents:
        raise HemosegError("--out must not be inside the dataset folder", out)
