"""Reading Roboflow-style COCO segmentation exports.

A dataset is either a folder with `train/`, `valid/`, `test/` subfolders each
holding images and `_annotations.coco.json`, a single folder holding one
`_annotations.coco.json`, or a plain COCO JSON file whose `file_name`s are
relative to the JSON's folder.

Reading never trusts the file: every structural problem becomes a `Problem`
(with the file and the id it concerns) and the offending item is left out, so
`hemoseg data check` and training report the same diagnosis.

Intensities: a Roboflow export is grayscale under one CT window (assumed to be
the brain window). A dataset whose images carry three windows as their colour
channels says so in its `info`: `"hemoseg_windows": [[40, 80], [80, 200],
[600, 2800]]` (level, width in HU, one per R, G, B), as `hemoseg synth
--windows` writes.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hemoseg.data.preprocessing import IMAGE_WINDOW_COUNTS, NAMED_WINDOWS, Window, check_windows
from hemoseg.errors import HemosegError

ANNOTATION_FILE = "_annotations.coco.json"
SPLIT_NAMES = ("train", "valid", "test")
_SPLIT_ALIASES = {"val": "valid", "validation": "valid"}
WINDOWS_KEY = "hemoseg_windows"  # in the COCO "info" block
# Coordinates this far outside the image are treated as rounding, not an error.
_EDGE_TOLERANCE = 1.0


@dataclass(frozen=True)
class Problem:
    severity: str  # "error": the item is left out; "warning": kept
    file: str
    item: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file} [{self.item}]" if self.item else self.file
        return f"{self.severity.upper()}: {where}: {self.message}"


@dataclass(frozen=True)
class ClassList:
    """Foreground classes in model order. Label k+1 (multiclass) or channel k
    (multilabel) is `names[k]`; the order is the file's category-id order."""

    names: tuple[str, ...]
    coco_ids: tuple[int, ...]

    def index_of(self, coco_id: int) -> int:
        return self.coco_ids.index(coco_id)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "coco_ids": list(self.coco_ids)}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassList":
        return cls(tuple(d["names"]), tuple(int(i) for i in d["coco_ids"]))

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class ImageRecord:
    id: int | str
    file_name: str
    path: Path
    height: int
    width: int
    annotations: list[dict] = field(default_factory=list)


@dataclass
class Split:
    name: str
    json_path: Path
    images: list[ImageRecord]
    categories: list[dict]
    problems: list[Problem]
    windows: tuple[Window, ...] = (NAMED_WINDOWS["brain"],)
    """The CT window behind each image channel (see the module docstring)."""

    @property
    def classes(self) -> ClassList:
        return class_list(self.categories)


@dataclass
class Dataset:
    root: Path
    splits: dict[str, Split]

    @property
    def classes(self) -> ClassList:
        """The class list is the training split's (or the first split's)."""
        split = self.splits.get("train") or next(iter(self.splits.values()))
        return split.classes

    @property
    def problems(self) -> list[Problem]:
        return [p for s in self.splits.values() for p in s.problems]


def roboflow_categories(names: dict[int, str]) -> list[dict]:
    """Roboflow's layout, for exports hemoseg writes: a supercategory placeholder with
    id 0, then the classes by id."""
    return [{"id": 0, "name": "lesions", "supercategory": "none"}] + [
        {"id": k, "name": names[k], "supercategory": "lesions"} for k in sorted(names)]


def is_placeholder(cat: dict, categories: list[dict]) -> bool:
    """Roboflow adds a supercategory (id 0, e.g. "lesions") that no annotation
    uses; it names the group, it is not a class."""
    name = cat.get("name")
    return any(c is not cat and c.get("supercategory") == name for c in categories) or (
        cat.get("id") == 0 and cat.get("supercategory") in (None, "none", "")
    )


def class_list(categories: list[dict]) -> ClassList:
    real = [c for c in categories if not is_placeholder(c, categories)]
    real.sort(key=lambda c: c["id"])
    return ClassList(tuple(str(c["name"]) for c in real), tuple(int(c["id"]) for c in real))


def find_split_files(path: str | Path) -> dict[str, Path]:
    """Map split name -> annotation JSON for any accepted dataset layout."""
    path = Path(path)
    if not path.exists():
        raise HemosegError("dataset not found", path)
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise HemosegError("expected a dataset folder or a COCO .json file", path)
        return {_split_name(path.parent.name, default="train"): path}
    found = {}
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        name = _SPLIT_ALIASES.get(sub.name.lower(), sub.name.lower())
        if name in SPLIT_NAMES:
            if (sub / ANNOTATION_FILE).exists():
                found[name] = sub / ANNOTATION_FILE
            else:
                jsons = sorted(sub.glob("*.json"))
                if len(jsons) == 1:
                    found[name] = jsons[0]
    if found:
        return found
    if (path / ANNOTATION_FILE).exists():
        return {_split_name(path.name, default="train"): path / ANNOTATION_FILE}
    raise HemosegError(
        f"no COCO annotations found (expected train/valid/test folders with {ANNOTATION_FILE})", path
    )


def _split_name(name: str, default: str) -> str:
    name = _SPLIT_ALIASES.get(name.lower(), name.lower())
    return name if name in SPLIT_NAMES else default


def load_dataset(path: str | Path, check_files: bool = True) -> Dataset:
    files = find_split_files(path)
    return Dataset(Path(path), {name: load_split(js, name, check_files) for name, js in files.items()})


def load_split(json_path: Path, name: str, check_files: bool = True) -> Split:
    """Parse and validate one split. With `check_files`, image headers are read
    to compare the JSON size with the file's; pixels are not decoded here."""
    from hemoseg.data.images import image_size

    json_path = Path(json_path)
    problems: list[Problem] = []
    jfile = str(json_path)

    def problem(sev: str, item: str, msg: str) -> None:
        problems.append(Problem(sev, jfile, item, msg))

    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem("error", "", f"unreadable annotation file ({' '.join(str(exc).split())[:100]})")
        return Split(name, json_path, [], [], problems)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        problem("error", "", "not a COCO file: no 'images' list")
        return Split(name, json_path, [], [], problems)
    info = doc.get("info") if isinstance(doc.get("info"), dict) else {}
    windows = (NAMED_WINDOWS["brain"],)
    if WINDOWS_KEY in info:
        try:
            windows = check_windows(info[WINDOWS_KEY])
            if len(windows) not in IMAGE_WINDOW_COUNTS:
                raise ValueError(f"{len(windows)} windows; an image holds 1 (gray) or 3 (RGB)")
        except ValueError as exc:
            problem("error", f"info.{WINDOWS_KEY}", str(exc))
            return Split(name, json_path, [], [], problems)

    categories = [c for c in doc.get("categories") or [] if isinstance(c, dict) and "id" in c]
    for cid, n in Counter(c["id"] for c in categories).items():
        if n > 1:
            problem("error", f"category {cid}", f"duplicate category id ({n} times)")
    cat_ids = {c["id"] for c in categories}
    placeholder_ids = {c["id"] for c in categories if is_placeholder(c, categories)}

    images: dict = {}
    seen_ids = Counter(im.get("id") for im in doc["images"] if isinstance(im, dict))
    for im in doc["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            problem("error", "image ?", "image entry without id or file_name")
            continue
        iid = im["id"]
        if seen_ids[iid] > 1:
            if iid not in images:
                problem("error", f"image {iid}", f"duplicate image id ({seen_ids[iid]} times); all left out")
            images[iid] = None
            continue
        path = json_path.parent / str(im["file_name"])
        try:
            h, w = int(im.get("height", 0)), int(im.get("width", 0))
        except (TypeError, ValueError):
            h = w = 0
        if not path.is_file():
            problem("error", f"image {iid}", f"image file missing: {path.name}")
            images[iid] = None
            continue
        if check_files:
            try:
                fh, fw = image_size(path)
            except Exception:  # corrupt header; PIL raises many types
                problem("error", f"image {iid}", f"corrupt image file: {path.name}")
                images[iid] = None
                continue
            if (h, w) != (fh, fw):
                problem("error", f"image {iid}",
                        f"JSON size {w}x{h} disagrees with file {path.name} ({fw}x{fh})")
                images[iid] = None
                continue
        if h <= 0 or w <= 0:
            problem("error", f"image {iid}", "missing or invalid width/height")
            images[iid] = None
            continue
        images[iid] = ImageRecord(iid, str(im["file_name"]), path, h, w)

    anns = [a for a in doc.get("annotations") or [] if isinstance(a, dict)]
    ann_ids = Counter(a.get("id") for a in anns)
    for aid, n in ann_ids.items():
        if n > 1:
            problem("error", f"annotation {aid}", f"duplicate annotation id ({n} times); all left out")
    for a in anns:
        aid = a.get("id")
        item = f"annotation {aid}"
        if ann_ids[aid] > 1:
            continue
        if a.get("image_id") not in images:
            problem("error", item, f"refers to unknown image id {a.get('image_id')!r}")
            continue
        if a.get("category_id") not in cat_ids:
            problem("error", item, f"refers to unknown category id {a.get('category_id')!r}")
            continue
        if a["category_id"] in placeholder_ids:
            problem("error", item, f"uses the placeholder supercategory {a['category_id']}, not a class")
            continue
        record = images[a["image_id"]]
        if record is None:
            continue  # its image was already reported
        seg = _validate_segmentation(a.get("segmentation"), record, problem, item)
        if seg is None:
            continue
        record.annotations.append({**a, "segmentation": seg})

    kept = [r for r in images.values() if r is not None]
    if not kept:
        problem("error", "", f"split '{name}' has no usable images")
    return Split(name, json_path, kept, categories, problems, windows)


def _validate_segmentation(seg, record: ImageRecord, problem, item: str):
    """Return the usable segmentation (bad polygon parts dropped) or None."""
    h, w = record.height, record.width
    if isinstance(seg, dict):  # RLE
        size = seg.get("size")
        if not (isinstance(size, list) and len(size) == 2) or "counts" not in seg:
            problem("error", item, "malformed RLE (needs 'size' and 'counts')")
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()
                   for v in size):
            problem("error", item, f"malformed RLE size {size!r}")
            return None
        if [int(size[0]), int(size[1])] != [h, w]:
            problem("error", item, f"RLE size {size} disagrees with image {h}x{w}")
            return None
        counts = seg["counts"]
        if isinstance(counts, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
                problem("error", item, "malformed uncompressed RLE (counts must be non-negative integers)")
                return None
            if sum(counts) != h * w:
                problem("error", item, f"uncompressed RLE covers {sum(counts)} pixels, image has {h * w}")
                return None
        elif isinstance(counts, str):
            # pycocotools decodes a bad string into uninitialised memory
            # instead of failing, so the string is checked here.
            runs = _compressed_rle_runs(counts)
            if runs is None:
                problem("error", item, "malformed compressed RLE string")
                return None
            if sum(runs) != h * w:
                problem("error", item, f"compressed RLE covers {sum(runs)} pixels, image has {h * w}")
                return None
        else:
            problem("error", item, "malformed RLE (counts must be a list or a string)")
            return None
        return seg
    if not isinstance(seg, list) or not seg:
        problem("error", item, "no segmentation (empty or missing)")
        return None
    parts = []
    for k, part in enumerate(seg):
        if not isinstance(part, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in part):
            problem("error", item, f"polygon part {k} is not a list of numbers")
            continue
        if len(part) < 6 or len(part) % 2:
            problem("error", item, f"polygon part {k} has {len(part) // 2} points (needs >= 3)")
            continue
        xs, ys = part[0::2], part[1::2]
        if (min(xs) < -_EDGE_TOLERANCE or min(ys) < -_EDGE_TOLERANCE
                or max(xs) > w + _EDGE_TOLERANCE or max(ys) > h + _EDGE_TOLERANCE):
            problem("warning", item,
                    f"polygon part {k} has coordinates outside the {w}x{h} image (clipped)")
        parts.append([float(v) for v in part])
    return parts or None


def _compressed_rle_runs(counts: str) -> list[int] | None:
    """Run lengths of a COCO compressed RLE string, or None if it is malformed.

    Format (pycocotools maskApi.c): each run is a little-endian sequence of
    5-bit groups stored as chr(48 + group), bit 0x20 meaning "more follows"
    and bit 0x10 of the last group the sign; from the third run on, the value
    is a delta to the run two places back.
    """
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return runs
