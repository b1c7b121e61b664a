"""Side-by-side table of trained and evaluated runs (`hemoseg compare`).

A researcher's question is rarely "how good is this run" but "is this recipe
better than that one": paper vs default, gates on vs off. The table reads only
what `train` and `evaluate` already wrote (summary.json, metrics.json), and says
when two rows were not scored on the same data, split or TTA setting, because
then their difference means nothing.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemoseg.errors import HemosegError
from hemoseg.evaluation.metrics import bootstrap_dice, group_keys, paired_difference
from hemoseg.training.config import PRESETS, TrainConfig

# Fields that say how a run was executed, not what recipe it is.
_NOT_RECIPE = {"seed", "workers", "device_augment", "compile", "amp", "max_minutes", "init"}
_SCORED_ON = ("dataset", "split", "tta", "mode")


@dataclass
class Row:
    name: str
    summary: dict
    metrics: dict
    folder: Path | None = None
    """The evaluation folder, whose per_image.csv holds the counts a paired comparison needs."""


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise HemosegError("not found", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HemosegError(f"is not a readable JSON file ({type(exc).__name__})", path) from None
    if not isinstance(doc, dict):
        raise HemosegError("is not a JSON object", path)
    return doc


def load_row(path: Path, split: str) -> Row:
    """A run folder (its eval-SPLIT folder is used) or an evaluation folder."""
    path = Path(path)
    if not path.is_dir():
        raise HemosegError("is not a run or evaluation folder", path)
    if (path / "metrics.json").is_file():
        folder = path
        run = path.parent if (path.parent / "summary.json").is_file() else None
    elif (path / "summary.json").is_file():
        run, folder = path, path / f"eval-{split}"
        if not (folder / "metrics.json").is_file():
            raise HemosegError(f"has no eval-{split}/metrics.json (run 'hemoseg evaluate {path} DATASET "
                               f"--split {split}' first)", path)
    else:
        raise HemosegError("holds neither summary.json (a run) nor metrics.json (an evaluation)", path)
    metrics = _read_json(folder / "metrics.json")
    summary = _read_json(run / "summary.json") if run is not None else {}
    if not isinstance(metrics.get("per_class"), dict) or "dice_pooled_mean" not in metrics:
        raise HemosegError("metrics.json was not written by 'hemoseg evaluate'", path)
    return Row(str(path), summary, metrics, folder)


def image_counts(row: Row) -> dict[str, np.ndarray] | None:
    """{file name: (K, 3) TP/FP/FN} from the row's per_image.csv; None for evaluations
    written before the counts were kept there."""
    names = list(row.metrics["per_class"])  # binary mode's one class is "lesion", as in the CSV
    try:
        with open(row.folder / "per_image.csv", newline="") as f:
            records = list(csv.DictReader(f))
        return {r["file_name"]: np.array([[int(r[f"{k}[{n}]"]) for k in ("tp", "fp", "fn")] for n in names])
                for r in records}
    except (OSError, KeyError, ValueError, TypeError):
        return None


def intervals(rows: list[Row], group: str | None = None) -> list[tuple[str, str]]:
    """Per row: its pooled Dice's 95% bootstrap interval, and its pooled Dice minus the
    first row's on the same images with a paired 95% interval ("n/a" where the rows were
    scored on different data or lack per-image counts). Both resample the same units:
    images, or patients with `group`. A paired interval that excludes 0 is a difference
    that resampling does not undo."""
    stacked = []  # per row: (file names, (N, K, 3) counts, group keys), or None
    for r in rows:
        c = image_counts(r)
        files = sorted(c) if c is not None else None
        stacked.append(None if c is None else (files, np.stack([c[f] for f in files]), group_keys(files, group)))
    out = []
    for i, (r, s) in enumerate(zip(rows, stacked)):
        if s is None:
            ci = (r.metrics.get("ci95") or {}).get("dice_pooled_mean")  # evaluate's own, by image
        else:
            ci = bootstrap_dice(s[1], list(r.metrics["per_class"]), s[2])["dice_pooled_mean"]
        own = "n/a" if not ci else f"{ci[0]:.3f}-{ci[1]:.3f}"
        first = stacked[0]
        if i == 0:
            versus = "(reference)"
        elif first is None or s is None or first[0] != s[0] or not _same_target(rows[0], r):
            versus = "n/a"
        else:
            d = paired_difference(first[1], s[1], first[2])
            versus = f"{d['difference']:+.3f}" + ("" if d["ci95"] is None else
                                                   f" [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
        out.append((own, versus))
    return out


def describe_recipe(train_config: dict | None) -> str:
    """The nearest preset and the recipe fields that differ from it."""
    if not train_config:
        return "unknown (no summary.json)"
    cfg = TrainConfig.from_dict(train_config).to_dict()
    best = None
    for name, preset in PRESETS.items():
        diff = {k: v for k, v in cfg.items() if k not in _NOT_RECIPE and preset.to_dict()[k] != v}
        if best is None or len(diff) < len(best[1]):
            best = (name, diff)
    name, diff = best
    return name + "".join(f" {k}={v}" for k, v in diff.items())


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(rows: list[Row], group: str | None = None) -> tuple[list[str], list[list[str]]]:
    classes: list[str] = []
    for r in rows:
        classes += [c for c in r.metrics["per_class"] if c not in classes]
    header = ["run", "recipe", "parameters", "epochs", "train min", "best val Dice", "split",
              "Dice pooled", "95% CI", "vs first [95% CI]", "Dice per image", "paper-style Dice", "IoU",
              "HD95 px", "sensitivity", "specificity"] + [f"Dice {c}" for c in classes]
    body = []
    for r, (own, versus) in zip(rows, intervals(rows, group)):
        s, m = r.summary, r.metrics
        det = m.get("detection") or {}
        minutes = s.get("train_seconds")
        val = s.get("best_val_dice")  # before calibration, which is fitted on validation itself
        body.append([r.name, describe_recipe(s.get("train_config")), _fmt(s.get("parameters")),
                     _fmt(s.get("epochs_run")), _fmt(None if minutes is None else minutes / 60, 1), _fmt(val),
                     f"{m.get('split', '?')}{' +TTA' if m.get('tta') else ''}",
                     _fmt(m.get("dice_pooled_mean")), own, versus,
                     _fmt(m.get("dice_per_image")),
                     _fmt(m.get("dice_paper_style")), _fmt(m.get("iou_pooled_mean")),
                     _fmt(m.get("hd95_px_mean"), 1), _fmt(det.get("sensitivity")), _fmt(det.get("specificity"))]
                    + [_fmt((m["per_class"].get(c) or {}).get("dice")) if c in m["per_class"] else "-"
                       for c in classes])
    return header, body


def _single_class(rows: list[Row]) -> bool:
    return all(len(r.metrics["per_class"]) == 1 for r in rows)


def _same_target(a: Row, b: Row) -> bool:
    """Scored on the same images against the same foreground: one dataset and split, and
    the same classes and mode, or one class each. On a one-class dataset the paper's
    binary "lesion" and the default preset's one softmax class are the same mask, so
    paper against default is a fair pair there."""
    if any(a.metrics.get(k) != b.metrics.get(k) for k in ("dataset", "split")):
        return False
    if _single_class([a, b]):
        return True
    return (a.metrics.get("mode") == b.metrics.get("mode")
            and list(a.metrics["per_class"]) == list(b.metrics["per_class"]))


def mismatches(rows: list[Row]) -> list[str]:
    """Why two rows may not be comparable, one line each."""
    notes = []
    for key in _SCORED_ON:
        if key == "mode" and _single_class(rows):
            continue  # one class: binary and multiclass score the same mask
        values = {json.dumps(r.metrics.get(key)) for r in rows}
        if len(values) > 1:
            notes.append(f"rows differ in {key} ({', '.join(sorted(values))}): their scores are not comparable")
    return notes
