"""Whole-study agreement of `hemoseg predict` output with reference label volumes.

`hemoseg evaluate` scores 2-D slices of a COCO split. Hemorrhage volumetry is
judged per study instead: 3-D Dice, the volume error in mL, and how well
predicted volumes agree with reference ones across studies (Bland-Altman bias
and limits of agreement, Lin's concordance correlation). This module computes
those from the labels.nii.gz that `predict` writes and the label volumes a
data set ships (BHSD, INSTANCE, CT-ICH, or `hemoseg synth`'s *_labels.nii.gz), or
the DICOM SEG a reader draws in OHIF or 3D Slicer.
Definitions: docs/metrics.md, "Study-level volumetry".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemoseg.errors import HemosegError
from hemoseg.evaluation import tables

LABEL_SUFFIXES = ("", "_labels")
"""A reference for study S is LABELS/S.nii[.gz] or LABELS/S_labels.nii[.gz] (`hemoseg synth`),
or a DICOM SEG LABELS/S.dcm (what OHIF, 3D Slicer or a PACS export)."""


@dataclass
class VolumetryResult:
    rows: list[dict] = field(default_factory=list)        # one per (study, class)
    per_class: dict[str, dict] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)     # one line per study not scored
    min_ml: float = 1.0
    tolerance: float = 0.05

    def to_dict(self) -> dict:
        return {"min_ml": self.min_ml, "tolerance": self.tolerance, "per_class": self.per_class,
                "studies": sorted({r["study"] for r in self.rows}), "failures": self.failures,
                "rows": self.rows}

    @classmethod
    def from_dict(cls, d: dict) -> "VolumetryResult":
        return cls(rows=d["rows"], per_class=d["per_class"], failures=d["failures"],
                   min_ml=d["min_ml"], tolerance=d["tolerance"])


def reference_for(labels_dir: Path, study: str) -> Path | None:
    for suffix in LABEL_SUFFIXES:
        for ext in (".nii.gz", ".nii", ".dcm"):
            p = labels_dir / f"{study}{suffix}{ext}"
            if p.is_file():
                return p
    return None


def score_study(pred_path: Path, ref_path: Path, study: str, class_names: list[str],
                reference_classes: dict[int, str] | None, series_uid: str | None = None) -> list[dict]:
    """Rows for every class named in both the model and the reference. `reference_classes`
    maps reference values (NIfTI labels, SEG segment numbers) to class names; without it a
    NIfTI label k is the model's class k and a SEG segment is matched by its label (a class
    with no segment counts as absent)."""
    from hemoseg.inference.readers import read_label_volume, voxel_to_world

    pred, predicted = read_label_volume(pred_path)
    if not predicted.spacing:
        raise HemosegError("has no usable voxel size, so no volumes", pred_path)
    voxel_ml = float(np.prod(predicted.spacing)) / 1000.0
    if ref_path.suffix.lower() == ".dcm":
        ref, names = _seg_reference(ref_path, pred.shape, voxel_to_world(predicted), class_names,
                                    reference_classes, series_uid)
    else:
        names = reference_classes or {k: n for k, n in enumerate(class_names, start=1)}
        ref, _ = read_label_volume(ref_path, on=predicted, onto="predicted study", known=names)
    if not set(names.values()) & set(class_names):
        raise HemosegError(f"none of the reference classes is a model class ({', '.join(class_names)})", ref_path)
    rows = []
    for k, name in enumerate(class_names, start=1):
        values = [v for v, n in names.items() if n == name]  # a SEG may hold one class in two segments
        if not values:
            continue
        p, r = pred == k, np.isin(ref, values)
        ps, rs, both = int(p.sum()), int(r.sum()), int(np.count_nonzero(p & r))
        rows.append({"study": study, "class": name, "reference_ml": rs * voxel_ml,
                     "predicted_ml": ps * voxel_ml, "error_ml": (ps - rs) * voxel_ml,
                     "rel_error": (ps - rs) / rs if rs else None,
                     "dice": 2 * both / (ps + rs) if ps + rs else None})
    return rows


def _seg_reference(path: Path, shape, to_world, class_names: list[str], classes: dict[int, str] | None,
                   series_uid: str | None) -> tuple[np.ndarray, dict[int, str]]:
    """A SEG's segment numbers on the predicted grid, and the class of each number."""
    from hemoseg.inference.segs import seg_on_grid

    ref, labels = seg_on_grid(path, shape, to_world, series_uid)
    if classes is None:
        strangers = sorted(label for label in labels.values() if label not in class_names)
        if strangers:
            raise HemosegError(f"segments {strangers} are not model classes; map segment numbers with --classes",
                               path)
        # A SEG lists the findings it has: a model class it lacks is scored as empty, so
        # the model's findings of that class count as false ones.
        missing = [n for n in class_names if n not in labels.values()]
        classes = {**labels, **{-k: n for k, n in enumerate(missing, start=1)}}
    unknown = sorted(set(np.unique(ref).tolist()) - set(classes) - {0})
    if unknown:
        raise HemosegError(f"segment numbers {unknown} have no class (see --classes)", path)
    return ref, classes


def agreement(x: np.ndarray, y: np.ndarray) -> dict:
    """Bland-Altman (y - x) and Lin's concordance correlation of paired volumes."""
    n = len(x)
    if n < 2:
        return {"n": n, "bias_ml": float(y[0] - x[0]) if n else None, "loa_ml": None, "ccc": None}
    d = y - x
    sd = float(np.std(d, ddof=1))
    bias = float(d.mean())
    cov = float(np.mean((x - x.mean()) * (y - y.mean())))
    denom = float(x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    return {"n": n, "bias_ml": bias, "loa_ml": [bias - 1.96 * sd, bias + 1.96 * sd],
            "ccc": 2 * cov / denom if denom > 0 else None}


def summarise(rows: list[dict], min_ml: float, tolerance: float) -> dict[str, dict]:
    out = {}
    for name in dict.fromkeys(r["class"] for r in rows):
        rs = [r for r in rows if r["class"] == name]
        # Dice where the reference has the class; studies without it count as false findings.
        dice = [r["dice"] for r in rs if r["reference_ml"] > 0]
        false = [r["predicted_ml"] for r in rs if r["reference_ml"] == 0 and r["predicted_ml"] > 0]
        big = [abs(r["rel_error"]) for r in rs if r["reference_ml"] > min_ml]
        seen = [r for r in rs if r["reference_ml"] > 0 or r["predicted_ml"] > 0]
        out[name] = {
            "studies": len(rs),
            "with_reference": sum(r["reference_ml"] > 0 for r in rs),
            "mean_dice": float(np.mean(dice)) if dice else None,
            "lesions_over_min_ml": len(big),
            "within_tolerance": sum(e <= tolerance for e in big),
            "median_abs_rel_error": float(np.median(big)) if big else None,
            "false_studies": len(false),
            "false_volume_ml": float(sum(false)),
            **agreement(np.array([r["reference_ml"] for r in seen]), np.array([r["predicted_ml"] for r in seen])),
        }
    return out


def score_folders(predictions: Path, labels: Path, reference_classes: dict[int, str] | None = None,
                  min_ml: float = 1.0, tolerance: float = 0.05) -> VolumetryResult:
    """Every study folder of `predictions` (the --out of `predict`) against its reference.

    Without `reference_classes`, NIfTI label k is the model's class k (the numbering of
    predict's own labels.nii.gz and of `hemoseg synth`) and SEG segments go by their labels."""
    for folder, what in ((predictions, "a 'hemoseg predict' output folder"), (labels, "a folder of references")):
        if not folder.is_dir():
            raise HemosegError(f"is not {what}", folder)
    studies = sorted(p for p in predictions.iterdir() if (p / "report.json").is_file())
    if not studies:
        raise HemosegError("holds no study folders with report.json (is it the --out of 'hemoseg predict'?)",
                           predictions)
    result = VolumetryResult(min_ml=min_ml, tolerance=tolerance)
    for folder in studies:
        try:
            report = json.loads((folder / "report.json").read_text())
            names = list(report["model"]["class_names"])
            pred = folder / "labels.nii.gz"
            if not pred.is_file():
                raise HemosegError("has no labels.nii.gz (image-slice input has no geometry to score)", folder)
            ref = reference_for(labels, folder.name)
            if ref is None:
                raise HemosegError(f"no reference named {folder.name}.nii[.gz], {folder.name}_labels.nii[.gz] "
                                   f"or {folder.name}.dcm in {labels}", folder)
            series = (report.get("dicom_ids") or {}).get("SeriesInstanceUID")
            result.rows += score_study(pred, ref, folder.name, names, reference_classes, series)
        except HemosegError as exc:
            result.failures.append(str(exc))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            result.failures.append(f"{folder}: cannot score ({type(exc).__name__}: {' '.join(str(exc).split())})")
    result.per_class = summarise(result.rows, min_ml, tolerance)
    return result


def _fmt(v, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def markdown(result: VolumetryResult) -> str:
    pct = f"{result.tolerance:.0%}"
    head = ["class", "with reference", "mean Dice", f"within {pct} (> {result.min_ml:g} mL)", "median abs error",
            "bias mL", "95% limits mL", "CCC", "false: studies, mL"]
    body = []
    for name, c in result.per_class.items():
        loa = c["loa_ml"]
        body.append([
            name, f"{c['with_reference']} of {c['studies']}", _fmt(c["mean_dice"]),
            f"{c['within_tolerance']} of {c['lesions_over_min_ml']}",
            _fmt(c["median_abs_rel_error"], ".1%"), _fmt(c["bias_ml"], "+.2f"),
            f"{loa[0]:+.2f} to {loa[1]:+.2f}" if loa else "-", _fmt(c["ccc"]),
            f"{c['false_studies']}, {c['false_volume_ml']:.2f}",
        ])
    return tables.markdown(head, body)


def csv_text(result: VolumetryResult) -> str:
    cols = ["study", "class", "reference_ml", "predicted_ml", "error_ml", "rel_error", "dice"]
    return tables.csv_text(cols, [[r[c] if isinstance(r[c], str) else "" if r[c] is None else f"{r[c]:.6g}"
                                   for c in cols] for r in result.rows])
