"""CT volumes with label volumes -> the COCO export `hemoseg train` reads.

Most public hemorrhage sets ship as NIfTI pairs (BHSD, INSTANCE, PhysioNet CT-ICH: one
CT volume and one label volume per patient), and a hospital's own annotations are
DICOM series with the DICOM SEG a reader drew on them (OHIF, 3D Slicer), not Roboflow
exports. The conversion:

* pairs IMAGES/<name>.nii[.gz] with LABELS/<name>.nii[.gz], or each DICOM series
  folder SERIES/<name>/ with SEGS/<name>.dcm (placed on the series' own voxel grid);
* splits by volume, so no patient appears in two splits (seeded, reproducible);
* reads both through the same reader `predict` uses (same orientation: radiological
  axial slices, inferior first), so a model trained on the export sees slices the way
  it will see DICOM and NIfTI studies;
* windows each slice as `predict` windows Hounsfield units, and records the windows in
  the COCO `info` block, so the checkpoint carries them;
* keeps every slice with a label, and a seeded fraction of the label-free slices that
  show the head (negatives teach the network what normal brain looks like);
* stores each class of a slice as one exact RLE annotation; images are lossless PNG.

A pair that cannot be converted (no label file, a different grid, a label value with no
class) is reported on one line and skipped; the others are converted.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from hemoseg.data.coco import SPLIT_NAMES as SPLITS, WINDOWS_KEY, roboflow_categories
from hemoseg.data.preprocessing import IMAGE_WINDOW_COUNTS, Window, describe_windows, windowed_image
from hemoseg.data.rasterize import mask_bbox, mask_to_rle
from hemoseg.errors import HemosegError
from hemoseg.staging import refuse_existing, staged_dir

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class Conversion:
    out: Path
    volumes: dict[str, list[str]] = field(default_factory=dict)  # split -> volume names
    images: dict[str, int] = field(default_factory=dict)         # split -> slices written
    annotations: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> count
    skipped: list[str] = field(default_factory=list)             # one line per pair not converted


def volume_name(path: Path) -> str | None:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def find_pairs(images: Path, labels: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(name, image, label) for every image volume with a label volume; problems as lines."""
    for folder, what in ((images, "image"), (labels, "label")):
        if not folder.is_dir():
            raise HemosegError(f"is not a folder of {what} volumes", folder)
    label_of = {volume_name(p): p for p in sorted(labels.iterdir()) if volume_name(p)}
    pairs, problems = [], []
    for p in sorted(images.iterdir()):
        name = volume_name(p)
        if name is None:
            continue
        if name in label_of:
            pairs.append((name, p, label_of[name]))
        else:
            problems.append(f"{p}: no label volume named {name}.nii.gz or {name}.nii in {labels}")
    if not pairs and not problems:
        raise HemosegError("holds no .nii or .nii.gz volumes", images)
    return pairs, problems


def assign_splits(names: list[str], valid: float, test: float, seed: int) -> dict[str, str]:
    """Volume name -> split. Every split asked for gets at least one volume when there are
    enough, and train keeps the rest."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = min(max(round(test * n), 1 if test > 0 else 0), max(n - 1, 0))
    n_valid = min(max(round(valid * n), 1 if valid > 0 else 0), max(n - 1 - n_test, 0))
    split = {}
    for i, name in enumerate(order):
        split[name] = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
    return split


def _nifti_pair(name: str, image: Path, label: Path, classes: dict[int, str]):
    from hemoseg.inference.readers import read_label_volume, read_nifti

    study = read_nifti(image, name=name)
    if not study.is_hu:
        raise HemosegError("holds 8-bit display values, not Hounsfield units", image)
    return study, read_label_volume(label, on=study, known=classes)[0].astype(np.uint8)


def find_dicom_pairs(series: Path, segs: Path):
    """(name, StudyInput, SEG path) for every DICOM series under SERIES with SEGS/<name>.dcm."""
    from hemoseg.inference.readers import discover

    for folder, what in ((series, "DICOM series"), (segs, "DICOM SEG files")):
        if not folder.is_dir():
            raise HemosegError(f"is not a folder of {what}", folder)
    items, found = discover([series])
    problems = [str(exc) for _, exc in found]
    pairs = []
    for item in (i for i in items if i.kind == "dicom"):  # NIfTI or images beside the series are not asked for
        seg = segs / f"{item.name}.dcm"
        if seg.is_file():
            pairs.append((item.name, item, seg))
        else:
            problems.append(f"{item.origin}: no DICOM SEG named {item.name}.dcm in {segs}")
    if not pairs and not problems:
        raise HemosegError("holds no DICOM series", series)
    return pairs, problems


def _dicom_pair(name: str, item, seg: Path, classes: dict[int, str]):
    from hemoseg.inference.readers import load_study
    from hemoseg.inference.segs import seg_on_grid

    study = load_study(item)
    segments, labels = seg_on_grid(seg, study.shape, study.affine, study.dicom[0].get("SeriesInstanceUID"))
    class_of = {n: k for k, n in classes.items()}
    strangers = sorted(set(labels.values()) - set(class_of))
    if strangers:
        raise HemosegError(f"segments {strangers} have no class (--classes names "
                           f"{', '.join(classes.values())})", seg)
    lut = np.zeros(max(labels) + 1, np.uint8)
    for number, label in labels.items():
        lut[number] = class_of[label]
    return study, lut[segments]


SOURCES = {"nifti": (find_pairs, _nifti_pair), "dicom": (find_dicom_pairs, _dicom_pair)}


def convert(images: Path, labels: Path, out: Path, classes: dict[int, str], windows: tuple[Window, ...],
            *, source: str = "nifti", valid: float = 0.1, test: float = 0.1, negatives: float = 0.25,
            seed: int = 0, force: bool = False) -> Conversion:
    """Write OUT/{train,valid,test}/ (images + _annotations.coco.json) from NIfTI pairs
    (`source` "nifti") or DICOM series with SEGs ("dicom"). OUT appears only when
    complete: everything is written to a hidden folder beside it, then renamed."""
    if len(windows) not in IMAGE_WINDOW_COUNTS:
        raise HemosegError(f"an image file holds {' or '.join(map(str, IMAGE_WINDOW_COUNTS))} windows "
                           f"(gray or R, G, B), not {len(windows)}")
    if not classes or any(k < 1 or k > 255 for k in classes):
        raise HemosegError("--classes needs label values 1..255, e.g. '1=Epidural hemorrhage'")
    for frac, flag in ((valid, "--valid"), (test, "--test"), (negatives, "--negatives")):
        if not 0 <= frac <= 1:
            raise HemosegError(f"{flag} must be a fraction between 0 and 1, got {frac:g}")
    refuse_existing(out, force)
    find, load = SOURCES[source]
    pairs, skipped = find(images, labels)
    split_of = assign_splits([name for name, _, _ in pairs], valid, test, seed)

    ids = sorted(classes)
    categories = roboflow_categories(classes)
    docs = {s: {"info": {"description": f"converted by hemoseg from {images.name} + {labels.name}",
                         WINDOWS_KEY: [list(w) for w in windows]},
                "licenses": [], "categories": categories, "images": [], "annotations": []} for s in SPLITS}
    result = Conversion(out=out, skipped=skipped)
    rng = random.Random(seed)
    with staged_dir(out, force) as tmp:
        for s in SPLITS:
            (tmp / s).mkdir(parents=True)
        for name, img_path, lab_path in pairs:
            try:
                study, lab = load(name, img_path, lab_path, classes)
            except HemosegError as exc:
                result.skipped.append(str(exc))
                continue
            split = split_of[name]
            doc = docs[split]
            head = (study.pixels > -500).any(axis=(1, 2))  # slices that show more than air
            for z in range(study.shape[0]):
                present = [k for k in ids if (lab[z] == k).any()]
                if not present and not (head[z] and rng.random() < negatives):
                    continue
                file_name = f"{name}_z{z:03d}.png"
                Image.fromarray(windowed_image(study.pixels[z], windows)).save(tmp / split / file_name)
                image_id = len(doc["images"])
                h, w = lab[z].shape
                doc["images"].append({"id": image_id, "file_name": file_name, "height": h, "width": w})
                for k in present:
                    m = lab[z] == k
                    doc["annotations"].append({
                        "id": len(doc["annotations"]), "image_id": image_id, "category_id": k,
                        "segmentation": mask_to_rle(m), "area": int(m.sum()), "iscrowd": 0,
                        "bbox": mask_bbox(m)})
            result.volumes.setdefault(split, []).append(name)
        if not any(result.volumes.values()):
            shutil.rmtree(tmp)  # nothing to write; the caller reports every skipped pair
            return result
        for s in SPLITS:
            (tmp / s / "_annotations.coco.json").write_text(json.dumps(docs[s]))
            result.images[s] = len(docs[s]["images"])
            counts = {classes[k]: 0 for k in ids}
            for a in docs[s]["annotations"]:
                counts[classes[a["category_id"]]] += 1
            result.annotations[s] = counts
    return result


def summary_lines(result: Conversion, windows: tuple[Window, ...]) -> list[str]:
    lines = []
    for s in SPLITS:
        vols = result.volumes.get(s, [])
        per_class = ", ".join(f"{n} {c}" for n, c in result.annotations.get(s, {}).items())
        lines.append(f"{s}: {len(vols)} volume(s), {result.images.get(s, 0)} slices; annotations: {per_class}")
    lines.append(f"windows {describe_windows(windows)}; wrote {result.out}")
    return lines
