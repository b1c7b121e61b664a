"""`hemoseg compare RUN [RUN ...]`: evaluated runs side by side (evaluation/compare.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from hemoseg.errors import HemosegError


def register(sub) -> None:
    p = sub.add_parser("compare", help="evaluated runs side by side (Markdown table)",
                       description="One row per run: recipe (nearest preset and what differs), parameters, "
                                   "training time, validation Dice, and the metrics 'hemoseg evaluate' wrote "
                                   "for --split. Says when rows were scored on different data.")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                   help="run folder (uses RUN/eval-SPLIT) or an evaluation folder (--out of evaluate)")
    p.add_argument("--split", default="test", help="which evaluation of a run folder to read (default test)")
    p.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV")
    p.add_argument("--group", metavar="REGEX",
                   help="patient key in each file name, as for evaluate: the intervals then resample "
                        "patients, not slices")
    p.set_defaults(func=run)


def run(args) -> int:
    from hemoseg.evaluation.compare import load_row, mismatches, table
    from hemoseg.evaluation.tables import csv_text, markdown

    rows = [load_row(p, args.split) for p in args.runs]
    header, body = table(rows, args.group)
    if args.csv is not None:
        try:
            args.csv.write_text(csv_text(header, body))
        except OSError as exc:
            raise HemosegError(f"cannot write ({exc.strerror or type(exc).__name__})", args.csv) from None
    print(markdown(header, body))
    for note in mismatches(rows):
        print(f"hemoseg: note: {note}", file=sys.stderr)
    return 0
