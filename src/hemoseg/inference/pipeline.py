"""Run a predictor over studies and write every output, one study at a time.

Each study is written into a hidden temporary folder inside the output folder
and renamed into place only when complete, so an interrupted or failed study
leaves nothing half-written behind. In a batch, a study that fails is reported
on one line (path and problem) and skipped; the others still complete.

Output layout, per study in OUT/<study name>/:
    report.json, report.csv, report.html   measurements + research notice
    montage.png                             slices with findings, legend
    masks/slice_NNNN.png                    label values (0 = background)
    overlays/slice_NNNN.png                 CT with coloured classes + legend
    labels.nii.gz                           DICOM/NIfTI input only, input geometry
    seg.dcm                                 DICOM input with findings only
and OUT/summary.json, OUT/summary.csv over every study report in OUT.
Slice NNNN is the study's slice order (inferior -> superior for DICOM/NIfTI;
natural file-name order for images); report.json maps it to source files.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemoseg.errors import HemosegError
from hemoseg.staging import refuse_existing, staged_dir
from hemoseg.inference import outputs, report as reporting
from hemoseg.inference.readers import StudyInput, discover, load_study
from hemoseg.inference.study import Study
from hemoseg.inference.volumes import measure

EXIT_OK, EXIT_SOME_FAILED, EXIT_ALL_FAILED = 0, 1, 2


@dataclass
class StudyResult:
    name: str | None
    origin: Path
    out_dir: Path | None = None
    report: dict | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BatchResult:
    out_dir: Path
    results: list[StudyResult] = field(default_factory=list)
    summary: Path | None = None

    @property
    def succeeded(self) -> list[StudyResult]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[StudyResult]:
        return [r for r in self.results if not r.ok]

    @property
    def exit_code(self) -> int:
        if not self.results or not self.succeeded:
            return EXIT_ALL_FAILED
        return EXIT_SOME_FAILED if self.failed else EXIT_OK


def predict_labels(predictor, study: Study, tta: bool = False, progress=None) -> np.ndarray:
    """Call the predictor and hold it to its contract before anything is written.
    `progress(n)` is called as slices are done."""
    labels = np.asarray(predictor.predict_volume(study, tta=tta, progress=progress))
    if labels.shape != study.shape:
        raise RuntimeError(f"predictor returned shape {labels.shape}, expected {study.shape}")
    n = len(predictor.class_names)
    if labels.size and (labels.min() < 0 or labels.max() > n):
        raise RuntimeError(f"predictor returned label {int(labels.max())} but knows {n} classes")
    return labels.astype(np.uint8)


def write_study(study: Study, labels: np.ndarray, class_names: list[str], preprocessing,
                folder: Path, *, origin=None, model: dict | None = None) -> dict:
    """Write all outputs of one study into `folder` (which should be empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    warnings = list(study.warnings)
    display = outputs.display_volume(study, preprocessing)
    outputs.write_mask_pngs(labels, folder / "masks")
    outputs.write_overlays(display, labels, class_names, folder / "overlays")
    montage = folder / "montage.png"
    shown = outputs.write_montage(display, labels, class_names, montage, title=study.name,
                                  slice_names=study.slice_sources)
    files = {"masks": "masks/", "overlays": "overlays/", "montage": "montage.png",
             "nifti": None, "dicom_seg": None}
    if study.affine is not None:
        outputs.write_nifti(labels, study, folder / "labels.nii.gz")
        files["nifti"] = "labels.nii.gz"
    if study.dicom:
        try:
            segs = outputs.write_dicom_seg(labels, study, class_names, folder / "seg.dcm")
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # highdicom refuses headers it finds incomplete; the volumes are still valid
            warnings.append(f"DICOM SEG not written: the source headers were not accepted "
                            f"by highdicom ({type(exc).__name__}: {' '.join(str(exc).split())})")
        else:
            if segs:
                files["dicom_seg"] = "seg.dcm"
            else:
                warnings.append("DICOM SEG not written: no hemorrhage found, nothing to encode")
    m = measure(labels[(slice(None), *_lesion_box(labels))], study.spacing, class_names, study.slice_mm)
    n = len(class_names)
    per_slice = [[k for k, c in enumerate(np.bincount(labels[z].ravel(), minlength=n + 1)) if k and c]
                 if labels[z].any() else [] for z in range(labels.shape[0])]
    model = dict(model or {})
    model.setdefault("class_names", list(class_names))
    rep = reporting.build_report(study, m, origin=origin or (study.source_paths[0] if
                                 study.source_paths else study.name), files=files, model=model,
                                 montage_slices=shown, labels_per_slice=per_slice,
                                 warnings=warnings)
    reporting.write_report(rep, folder, montage)
    return rep


def _lesion_box(labels: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns holding every labelled voxel. Measuring inside them
    gives the same numbers (only background is cut; slice indices are kept)
    while the 3-D connected-component passes look at a fraction of the volume."""
    rows = np.flatnonzero(labels.any(axis=(0, 2)))
    if not rows.size:
        return slice(None), slice(None)
    cols = np.flatnonzero(labels[:, rows[0]:rows[-1] + 1].any(axis=(0, 1)))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def run_study(predictor, item: StudyInput | Study, out_dir: Path, *, tta: bool = False,
              force: bool = False, model: dict | None = None, progress=None) -> StudyResult:
    """Read, predict and write one study atomically. Errors propagate."""
    out_dir = Path(out_dir)
    name = item.name
    final = out_dir / name
    refuse_existing(final, force)  # before the slow part
    study = load_study(item) if isinstance(item, StudyInput) else item
    origin = item.origin if isinstance(item, StudyInput) else None
    labels = predict_labels(predictor, study, tta=tta, progress=progress)
    with staged_dir(final, force) as tmp:
        rep = write_study(study, labels, list(predictor.class_names), predictor.preprocessing,
                          tmp, origin=origin, model=model)
    return StudyResult(name=name, origin=Path(origin or final), out_dir=final, report=rep)


def _one_line(origin: Path, exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    if isinstance(exc, HemosegError):
        return msg if msg.startswith(str(origin)) else f"{origin}: {msg}"
    return f"{origin}: internal error: {type(exc).__name__}: {msg} (set HEMOSEG_DEBUG=1 for a traceback)"


def _short(rep: dict) -> str:
    parts = []
    for c in rep["classes"]:
        if c["present"]:
            v = f'{c["volume_ml"]:.2f} mL' if c["volume_ml"] is not None else f'{c["voxels"]} voxels'
            parts.append(f'{c["class"]} {v}')
    found = ", ".join(parts) if parts else "no hemorrhage detected"
    if rep.get("spacing_note"):
        found += f' ({rep["spacing_note"]})'
    return f'{rep["study"]}: {found}'


def warm_up(predictor=None) -> None:
    """Pay a process's one-time costs before its first study needs them: import the
    writers' libraries and parse highdicom's tables of the DICOM standard (about a
    second on 2 cores), and, given a predictor, run the network once on a blank batch
    (first-call allocations, ~0.4 s). `predict` runs it beside model loading and
    inference (ONNX Runtime releases the GIL as it computes); a server runs it at
    start, so its first job is as fast as the rest. Never raises: a failed warm-up
    only means the first study pays instead."""
    try:
        import nibabel  # noqa: F401
        from highdicom import _standard_utils as standard

        standard.get_sop_class_iod_map(), standard.get_iod_module_map(), standard.get_module_attribute_map()
    except Exception:  # a private highdicom helper moved: the writers pay the cost instead
        pass
    if predictor is None or not hasattr(predictor, "probabilities"):
        return
    try:
        prep = predictor.preprocessing
        predictor.probabilities(np.zeros((predictor.batch_size, prep.size, prep.size, prep.channels), np.uint8))
    except Exception:
        pass


def run_batch(predictor, inputs, out_dir, *, tta: bool = False, force: bool = False,
              model: dict | None = None, progress: bool | None = None, each_series: bool = False,
              out=None, err=None) -> BatchResult:
    """Predict every study under `inputs` into `out_dir`.

    `predictor` may be a zero-argument callable returning one, so a batch with
    no readable input fails fast without loading a model. Prints one line per
    study (stdout) and per failure (stderr); `progress=None` shows the tqdm bar
    only on a terminal."""
    from tqdm import tqdm

    out, err = out or sys.stdout, err or sys.stderr
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise HemosegError("output path exists and is not a folder", out_dir)
    items, problems = discover(inputs, exclude=[out_dir], each_series=each_series)
    batch = BatchResult(out_dir=out_dir)
    for path, exc in problems:
        line = _one_line(path, exc)
        print(f"hemoseg: error: {line}", file=err)
        batch.results.append(StudyResult(name=None, origin=path, error=line))
    if not items:
        return batch
    threading.Thread(target=warm_up, name="hemoseg-warm", daemon=True).start()
    if not hasattr(predictor, "predict_volume") and callable(predictor):
        predictor = predictor()
    if model is not None and getattr(predictor, "backend", None):
        model["backend"] = str(getattr(predictor.backend, "name", model.get("backend")))
    out_dir.mkdir(parents=True, exist_ok=True)
    debug = bool(os.environ.get("HEMOSEG_DEBUG"))
    bar = tqdm(items, desc="hemoseg predict", unit="study", disable=None if progress is None
               else not progress, file=err, dynamic_ncols=True)
    for item in bar:
        inner = tqdm(desc=item.name, unit="slice", leave=False, disable=bar.disable, file=err,
                     dynamic_ncols=True)
        try:
            res = run_study(predictor, item, out_dir, tta=tta, force=force, model=model,
                            progress=inner.update)
        except KeyboardInterrupt:
            inner.close()
            bar.close()
            raise
        except MemoryError:
            res = StudyResult(item.name, item.origin, error=_one_line(item.origin, HemosegError(
                "out of memory while processing this study")))
        except Exception as exc:
            if debug and not isinstance(exc, HemosegError):
                raise
            res = StudyResult(item.name, item.origin, error=_one_line(item.origin, exc))
        inner.close()
        batch.results.append(res)
        if res.ok:
            tqdm.write(f"{_short(res.report)} -> {res.out_dir}", file=out)
        else:
            tqdm.write(f"hemoseg: error: {res.error}", file=err)
    bar.close()
    failures = [{"study": r.name, "input": str(r.origin), "error": r.error} for r in batch.failed]
    batch.summary = reporting.write_summary(out_dir, failures)
    return batch
