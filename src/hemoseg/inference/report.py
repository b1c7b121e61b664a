"""Per-study reports (JSON, CSV, HTML) and the batch summary.

report.json is the machine-readable record every other file is derived from;
the summary is rebuilt from the report.json files found in the output folder,
so it also covers studies written by earlier runs into the same folder.
Where a volume cannot be computed the value is null and the reason is given
beside it; nothing is estimated from assumed spacing.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from hemoseg import RESEARCH_NOTICE, __version__
from hemoseg.inference import intracranial
from hemoseg.inference.volumes import NO_SPACING, StudyMeasurements

REPORT_COLUMNS = [
    "study", "class", "label", "present", "voxels", "volume_ml", "volume_note",
    "abc2_ml", "abc2_a_mm", "abc2_b_mm", "abc2_c_mm", "abc2_note", "slices_involved",
    "lesion_count", "max_area", "max_area_unit", "max_area_slice",
]
SUMMARY_COLUMNS = [
    "study", "status", "class", "volume_ml", "volume_note", "abc2_ml", "slices_involved",
    "max_area", "max_area_unit", "source", "input", "error",
]


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _round(x, nd=3):
    return None if x is None else round(float(x), nd)


def build_report(study, measurements: StudyMeasurements, *, origin, files: dict,
                 model: dict, montage_slices: list[int], labels_per_slice: list[list[int]],
                 warnings: list[str]) -> dict:
    classes = []
    for c in measurements.classes:
        classes.append({
            "class": c.name, "label": c.label, "present": c.present, "voxels": c.voxels,
            "volume_ml": _round(c.volume_ml, 4), "volume_note": c.volume_note,
            "abc2": None if c.abc2 is None else {
                "volume_ml": _round(c.abc2.volume_ml, 4), "a_mm": _round(c.abc2.a_mm, 2),
                "b_mm": _round(c.abc2.b_mm, 2), "c_mm": _round(c.abc2.c_mm, 2),
                "slice_index": c.abc2.slice_index, "lesion_slices": c.abc2.lesion_slices},
            "abc2_note": c.abc2_note,
            "slices_involved": c.slices_involved, "lesion_count": c.lesion_count,
            "max_area": _round(c.max_area, 2), "max_area_unit": c.max_area_unit,
            "max_area_slice": c.max_area_slice,
        })
    ids = {}
    if study.dicom:
        ds = study.dicom[0]
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SeriesDescription", "StudyDate"):
            if kw in ds:
                ids[kw] = str(ds.get(kw))
    names = model.get("class_names", [])
    return {
        "notice": RESEARCH_NOTICE,
        "hemoseg_version": __version__,
        "created": _now(),
        "study": study.name,
        "source": study.source,
        "input": str(origin),
        "dicom_ids": ids or None,
        "n_source_files": len(study.source_paths),
        "shape_zhw": list(study.shape),
        "value_space": "hounsfield" if study.is_hu else "display 0..255",
        "spacing_mm": list(measurements.spacing_mm) if measurements.spacing_mm else None,
        "spacing_note": None if measurements.spacing_mm else NO_SPACING,
        "model": model,
        "postprocessing": ([intracranial.NOTE] if intracranial.applies(study) else []),
        "any_hemorrhage": measurements.total_voxels > 0,
        "total": {"voxels": measurements.total_voxels,
                  "volume_ml": _round(measurements.total_volume_ml, 4),
                  "volume_note": None if measurements.spacing_mm else NO_SPACING},
        "classes": classes,
        "abc2_definition": ("ABC/2 of the largest 3-D connected lesion: A = largest diameter "
                            "on the slice where it has the largest area, B = largest diameter "
                            "perpendicular to A on that slice, C = slices with the lesion x "
                            "slice spacing; volume = A*B*C/2"),
        "files": files,
        "montage_slices": montage_slices,
        "slices": [{"index": z, "source": (study.slice_sources[z] if z < len(study.slice_sources)
                                           else None),
                    "classes": [names[k - 1] for k in labs if 0 < k <= len(names)]}
                   for z, labs in enumerate(labels_per_slice)],
        "warnings": list(warnings),
    }


def report_rows(report: dict) -> list[dict]:
    rows = []
    for c in report["classes"]:
        a = c.get("abc2") or {}
        rows.append({
            "study": report["study"], "class": c["class"], "label": c["label"],
            "present": c["present"], "voxels": c["voxels"], "volume_ml": c["volume_ml"],
            "volume_note": c["volume_note"], "abc2_ml": a.get("volume_ml"),
            "abc2_a_mm": a.get("a_mm"), "abc2_b_mm": a.get("b_mm"), "abc2_c_mm": a.get("c_mm"),
            "abc2_note": c.get("abc2_note"), "slices_involved": c["slices_involved"],
            "lesion_count": c["lesion_count"], "max_area": c["max_area"],
            "max_area_unit": c["max_area_unit"], "max_area_slice": c["max_area_slice"],
        })
    return rows


def write_json(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_csv(rows: list[dict], columns: list[str], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


def write_report(report: dict, folder: Path, montage_png: Path | None) -> None:
    write_json(report, folder / "report.json")
    write_csv(report_rows(report), REPORT_COLUMNS, folder / "report.csv")
    (folder / "report.html").write_text(render_html(report, montage_png), encoding="utf-8")


# --------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
.notice{background:#b00020;color:#fff;font-weight:bold;padding:.8em 1em;border-radius:4px;
font-size:1.1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.3em .6em;
text-align:left}th{background:#eee}.na{color:#a00}.warn{color:#8a5a00}
img{max-width:100%;border:1px solid #ccc}.swatch{display:inline-block;width:.9em;height:.9em;
vertical-align:middle;margin-right:.4em}small{color:#666}
"""


def _fmt_ml(v, note):
    e = html.escape
    return f"{v:.2f} mL" if v is not None else f'<span class="na">{e(note or "unavailable")}</span>'


def render_html(report: dict, montage_png: Path | None) -> str:
    """Self-contained page (montage embedded) so it survives being emailed."""
    from hemoseg.inference.outputs import class_color

    e = html.escape
    rows = []
    for c in report["classes"]:
        rgb = "#%02x%02x%02x" % class_color(c["label"])
        a = c.get("abc2")
        if a:
            abc = (f'{a["volume_ml"]:.2f} mL <small>(A {a["a_mm"]:.1f} x B {a["b_mm"]:.1f} x '
                   f'C {a["c_mm"]:.1f} mm / 2)</small>')
        elif c.get("abc2_note"):
            abc = f'<span class="na">{e(c["abc2_note"])}</span>'
        else:
            abc = "&ndash;"
        area = f'{c["max_area"]:.1f} {"mm&sup2;" if c["max_area_unit"] == "mm2" else "px"}'
        rows.append(
            f'<tr><td><span class="swatch" style="background:{rgb}"></span>{e(c["class"])}</td>'
            f'<td>{_fmt_ml(c["volume_ml"], c["volume_note"])}</td><td>{abc}</td>'
            f'<td>{c["slices_involved"]}</td><td>{c["lesion_count"]}</td><td>{area}</td></tr>')
    total = report["total"]
    sp = report["spacing_mm"]
    spacing = (f"{sp[0]:.3g} x {sp[1]:.3g} x {sp[2]:.3g} mm (slice x row x column)" if sp
               else f'<span class="na">{e(report["spacing_note"])}</span>')
    img = ""
    if montage_png is not None and Path(montage_png).exists():
        b64 = base64.b64encode(Path(montage_png).read_bytes()).decode("ascii")
        head = "Slices with findings" if report["any_hemorrhage"] else "Sample slices (no findings)"
        img = f'<h2>{head}</h2><img alt="montage" src="data:image/png;base64,{b64}">'
    warns = "".join(f'<li class="warn">{e(w)}</li>' for w in report.get("warnings", []))
    model = report.get("model", {})
    out = io.StringIO()
    out.write(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>hemoseg report: {e(report["study"])}</title><style>{_CSS}</style></head><body>
<div class="notice" role="alert">{e(RESEARCH_NOTICE)}</div>
<h1>Hemorrhage segmentation: {e(report["study"])}</h1>
<p>Input: <code>{e(report["input"])}</code> ({e(report["source"])}, {report["n_source_files"]}
file(s), {report["shape_zhw"][0]} slice(s) of {report["shape_zhw"][1]} x {report["shape_zhw"][2]})<br>
Voxel spacing: {spacing}<br>
Any hemorrhage detected: <b>{"yes" if report["any_hemorrhage"] else "no"}</b></p>
<table><tr><th>Class</th><th>Volume (voxel count)</th><th>ABC/2 estimate</th><th>Slices</th>
<th>Lesions</th><th>Largest cross-section</th></tr>
{''.join(rows)}
<tr><th>Total</th><th>{_fmt_ml(total["volume_ml"], total["volume_note"])}</th>
<th colspan="4"></th></tr></table>
<p><small>Definition used: {e(report["abc2_definition"])}.</small></p>
{"<h2>Warnings</h2><ul>" + warns + "</ul>" if warns else ""}
{img}
<p><small>hemoseg {e(report["hemoseg_version"])}; model run {e(str(model.get("run", "?")))},
backend {e(str(model.get("backend", "?")))}, test-time augmentation
{"on" if model.get("tta") else "off"}; created {e(report["created"])}.
{"".join(" " + e(n) + "." for n in report.get("postprocessing", []))}</small></p>
<div class="notice">{e(RESEARCH_NOTICE)}</div>
</body></html>
""")
    return out.getvalue()


# --------------------------------------------------------------------------
# batch summary
# --------------------------------------------------------------------------
def collect_reports(out_dir: Path) -> list[dict]:
    reports = []
    for d in sorted(Path(out_dir).iterdir()):
        f = d / "report.json"
        if d.is_dir() and not d.name.startswith(".") and f.is_file():
            try:
                reports.append(json.loads(f.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue  # not ours or damaged: the summary covers what it can read
    return reports


def summarize(reports: list[dict], failures: list[dict]) -> dict:
    studies = []
    for r in reports:
        studies.append({
            "study": r["study"], "status": "ok", "source": r.get("source"), "input": r.get("input"),
            "spacing_mm": r.get("spacing_mm"), "any_hemorrhage": r.get("any_hemorrhage"),
            "total_volume_ml": r.get("total", {}).get("volume_ml"),
            "volume_note": r.get("spacing_note"),
            "volumes_ml": {c["class"]: c["volume_ml"] for c in r.get("classes", [])},
            "abc2_ml": {c["class"]: c["abc2"]["volume_ml"]
                        for c in r.get("classes", []) if c.get("abc2")},
            "report": f'{r["study"]}/report.html',
            "created": r.get("created"),
        })
    return {"notice": RESEARCH_NOTICE, "hemoseg_version": __version__, "created": _now(),
            "counts": {"studies": len(studies), "failed": len(failures)},
            "studies": studies, "failed": failures}


def write_summary(out_dir: Path, failures: list[dict]) -> Path | None:
    """summary.json/csv over every study report in out_dir; failures are this
    run's. Written via temporary files so a reader never sees half a file."""
    out_dir = Path(out_dir)
    reports = collect_reports(out_dir)
    if not reports:
        return None
    summary = summarize(reports, failures)
    rows = []
    for r in reports:
        for row in report_rows(r):
            rows.append({**row, "status": "ok", "source": r.get("source"), "input": r.get("input")})
    for f in failures:
        rows.append({"study": f.get("study"), "status": "failed", "input": f["input"],
                     "error": f["error"]})
    tmp_json, tmp_csv = out_dir / ".summary.json.tmp", out_dir / ".summary.csv.tmp"
    write_json(summary, tmp_json)
    write_csv(rows, SUMMARY_COLUMNS, tmp_csv)
    os.replace(tmp_json, out_dir / "summary.json")
    os.replace(tmp_csv, out_dir / "summary.csv")
    return out_dir / "summary.json"
