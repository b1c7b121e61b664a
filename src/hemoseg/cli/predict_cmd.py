"""`hemoseg predict`: segment and measure hemorrhage in CT studies.

Exit status: 0 every study written, 1 some studies failed (each reported on
one line, the rest completed), 2 nothing was written (all failed, or no
usable input).
"""

from __future__ import annotations

from pathlib import Path

from hemoseg import RESEARCH_NOTICE
from hemoseg.errors import HemosegError

EPILOG = """\
INPUT may be any mix of:
  a DICOM file, or a folder holding one DICOM series (folders are searched
    recursively: every subfolder with a series is its own study);
  a NIfTI volume (.nii/.nii.gz, 3-D);
  a PNG/JPG slice (one single-slice study), or a folder of them (one study,
    slices in natural name order; spacing unknown, so no volumes).
Files that cannot hold image slices (README.txt, DICOMDIR, a DICOM SEG or
report saved beside the CT, ...) and a localizer (scout) series beside the
axial one are skipped with a warning; an unreadable DICOM file fails its
study. Several image series in one folder fail that folder: put each series
in its own subfolder, or pass --each-series.

Per study, DIR/<study>/ receives report.html/.json/.csv, montage.png,
masks/ and overlays/ (one PNG per slice), labels.nii.gz (DICOM/NIfTI input)
and seg.dcm (DICOM input with findings). DIR/summary.json/.csv cover every
study in DIR.

Exit status: 0 all written, 1 some inputs failed (one line each, the rest
completed), 2 nothing written.

""" + RESEARCH_NOTICE


def register(sub):
    import argparse

    p = sub.add_parser(
        "predict", help="segment hemorrhage in CT studies and measure volumes",
        description="Segment intracranial hemorrhage with a trained run and write masks, "
                    "overlays, DICOM SEG/NIfTI and volume reports. " + RESEARCH_NOTICE,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="training run folder holding the model")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="studies to segment (see below)")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation (flips): slower, often slightly better")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help="inference engine (default: auto)")
    p.add_argument("--force", action="store_true",
                   help="replace existing outputs of the same study names in DIR")
    p.add_argument("--each-series", action="store_true",
                   help="a folder holding several image series (a flat PACS export of a whole study) gives "
                        "one study per series, DIR/<folder>_S<SeriesNumber>, instead of an error; localizer "
                        "(scout) series are left out, and each report says so")
    p.set_defaults(func=_run)


def load_predictor(run, backend: str):
    """Imported lazily: the model stack is only loaded when there is work."""
    from hemoseg.inference.predictor import Predictor

    return Predictor.from_run(run, backend=backend)


def _run(args) -> int:
    from hemoseg.inference.pipeline import run_batch

    run = Path(args.run)
    if not run.exists():
        raise HemosegError("run folder does not exist", run)
    out = Path(args.out)
    model = {"run": str(run), "backend": args.backend, "tta": bool(args.tta)}
    batch = run_batch(lambda: load_predictor(run, args.backend), args.inputs, out,
                      tta=args.tta, force=args.force, model=model, each_series=args.each_series)
    n_ok, n_bad = len(batch.succeeded), len(batch.failed)
    if n_ok:
        tail = f", {n_bad} failed" if n_bad else ""
        print(f"hemoseg: {n_ok} study(ies) written to {out}{tail}. {RESEARCH_NOTICE}")
    else:
        import sys

        print(f"hemoseg: nothing written: {n_bad} input(s) failed", file=sys.stderr)
    return batch.exit_code
