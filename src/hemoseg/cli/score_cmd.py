"""`hemoseg score PREDICTIONS LABELS`: whole-study Dice and volume agreement
of `predict` output with reference label volumes (evaluation/volumetric.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hemoseg.cli import argtypes
from hemoseg.errors import HemosegError


def register(sub) -> None:
    p = sub.add_parser(
        "score", help="score predicted studies against reference label volumes (3-D Dice, volumes)",
        description="For every study folder in PREDICTIONS (the --out of 'hemoseg predict' on DICOM or NIfTI "
                    "studies), compare its labels.nii.gz with LABELS/<study>.nii[.gz] (or <study>_labels.nii[.gz]), "
                    "or with a DICOM SEG LABELS/<study>.dcm drawn on the same series: "
                    "per study and class the 3-D Dice and the volume error in mL; per class the share of "
                    "lesions within the tolerance, Bland-Altman bias and 95% limits of agreement, and Lin's "
                    "concordance correlation (definitions: docs/metrics.md). A study that cannot be scored is "
                    "named and skipped (exit status 1); the inputs are only read.")
    p.add_argument("predictions", type=Path, metavar="PREDICTIONS", help="output folder of 'hemoseg predict'")
    p.add_argument("labels", type=Path, metavar="LABELS", help="folder of references (NIfTI label volumes, DICOM SEG)")
    p.add_argument("--classes", metavar="V=NAME,...",
                   help="reference label value (SEG: segment number) = model class name, e.g. "
                        "'1=Intraparenchymal hemorrhage' (default: NIfTI value k is the model's class k, as in "
                        "predict's own labels.nii.gz; SEG segments by their labels)")
    p.add_argument("--min-ml", type=argtypes.non_negative(float), default=1.0,
                   help="lesions above this reference volume count towards the tolerance (default 1)")
    p.add_argument("--tolerance", type=argtypes.positive(float), default=0.05,
                   help="relative volume error that counts as agreeing (default 0.05)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every number as JSON")
    p.add_argument("--csv", type=Path, metavar="FILE", help="also write one row per study and class")
    p.set_defaults(func=run)


def run(args) -> int:
    from hemoseg.evaluation.volumetric import csv_text, markdown, score_folders

    classes = argtypes.parse_classes(args.classes) if args.classes else None
    result = score_folders(args.predictions, args.labels, classes, args.min_ml, args.tolerance)
    if not result.rows:
        for line in result.failures:
            print(f"hemoseg: skipped: {line}", file=sys.stderr)
        raise HemosegError(f"no study could be scored ({len(result.failures)} skipped)", args.predictions)
    for path, text in ((args.json, lambda: json.dumps(result.to_dict(), indent=1)), (args.csv, lambda: csv_text(result))):
        if path is not None:
            try:
                path.write_text(text())
            except OSError as exc:
                raise HemosegError(f"cannot write ({exc.strerror or type(exc).__name__})", path) from None
    n = len({r["study"] for r in result.rows})
    print(f"{n} stud{'y' if n == 1 else 'ies'} scored against {args.labels}\n")
    print(markdown(result), flush=True)
    for line in result.failures:  # after the table, so they are the last thing on the screen
        print(f"hemoseg: skipped: {line}", file=sys.stderr)
    return 1 if result.failures else 0
