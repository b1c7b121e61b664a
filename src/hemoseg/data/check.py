"""`hemoseg data check`: a read-only audit of a COCO export.

The structural checks are the reader's own (`coco.load_split`), so a clean
check means training will see exactly the images and annotations counted here.
On top of that every image is fully decoded once (a truncated file passes a
header read but fails training much later), every annotation is rasterised
once (a zero-area polygon is silently useless), and split folders that the
reader would ignore are pointed out. Nothing is ever written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from hemoseg.data.coco import (
    ANNOTATION_FILE,
    SPLIT_NAMES,
    Problem,
    Split,
    _SPLIT_ALIASES,
    find_split_files,
    load_split,
)
from hemoseg.data.preprocessing import describe_windows
from hemoseg.data.rasterize import annotation_mask

EXIT_CLEAN, EXIT_WARNINGS, EXIT_ERRORS = 0, 1, 2


@dataclass
class SplitSummary:
    name: str
    images: int = 0
    annotations: int = 0
    problems: list[Problem] = field(default_factory=list)
    windows: str = "brain"

    @property
    def errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems)

    @property
    def warnings(self) -> int:
        return sum(p.severity == "warning" for p in self.problems)

    def line(self) -> str:
        windows = "" if self.windows == "brain" else f" ({self.windows} windows)"
        return (f"split {self.name}: {plural(self.images, 'image')}{windows}, "
                f"{plural(self.annotations, 'annotation')}, "
                f"{plural(self.errors, 'error')}, {plural(self.warnings, 'warning')}")


@dataclass
class CheckReport:
    root: Path
    splits: list[SplitSummary]
    layout: list[Problem] = field(default_factory=list)
    """Problems with the folder layout itself, outside any loaded split."""

    @property
    def problems(self) -> list[Problem]:
        return list(self.layout) + [p for s in self.splits for p in s.problems]

    @property
    def exit_code(self) -> int:
        severities = {p.severity for p in self.problems}
        if "error" in severities:
            return EXIT_ERRORS
        return EXIT_WARNINGS if "warning" in severities else EXIT_CLEAN

    def summary(self) -> str:
        errors = sum(p.severity == "error" for p in self.problems)
        warnings = sum(p.severity == "warning" for p in self.problems)
        verdict = {EXIT_CLEAN: "clean", EXIT_WARNINGS: "warnings only", EXIT_ERRORS: "errors found"}
        return (f"summary: {plural(len(self.splits), 'split')}, "
                f"{plural(sum(s.images for s in self.splits), 'image')}, "
                f"{plural(sum(s.annotations for s in self.splits), 'annotation')}, "
                f"{plural(errors, 'error')}, {plural(warnings, 'warning')}: {verdict[self.exit_code]}")

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems] + [s.line() for s in self.splits] + [self.summary()]


def plural(count: int, noun: str) -> str:
    """Counts read as words in the report: "1 error", "2 errors"."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _one_line(text: str, limit: int = 120) -> str:
    return " ".join(str(text).split())[:limit]


def check_dataset(path: str | Path) -> CheckReport:
    """Audit every split. Raises HemosegError only when no split can be found."""
    path = Path(path)
    files = find_split_files(path)
    summaries = [_check_split(json_path, name) for name, json_path in files.items()]
    order = {name: k for k, name in enumerate(SPLIT_NAMES)}
    summaries.sort(key=lambda s: order.get(s.name, len(order)))
    return CheckReport(path, summaries, _ignored_split_folders(path, files))


def _check_split(json_path: Path, name: str) -> SplitSummary:
    summary = SplitSummary(name)
    try:
        split = load_split(json_path, name, check_files=True)
    except Exception as exc:  # a file shape the reader did not foresee
        summary.problems.append(Problem("error", str(json_path), "",
                                        f"cannot read annotations ({type(exc).__name__}: {_one_line(exc)})"))
        return summary
    summary.problems.extend(split.problems)
    summary.windows = describe_windows(split.windows)
    _check_contents(split, summary)
    return summary


def _check_contents(split: Split, summary: SplitSummary) -> None:
    jfile = str(split.json_path)
    for rec in split.images:
        item = f"image {rec.id}"
        found = decode_problem(rec.path, len(split.windows))
        if found is not None:
            severity, message = found
            summary.problems.append(Problem(severity, jfile, item, message))
            if severity == "error":
                continue
        summary.images += 1
        for ann in rec.annotations:
            aitem = f"annotation {ann.get('id')}"
            try:
                pixels = int(annotation_mask(ann["segmentation"], rec.height, rec.width).sum())
            except Exception as exc:
                summary.problems.append(Problem("error", jfile, aitem,
                                                f"cannot rasterise segmentation ({_one_line(exc)})"))
                continue
            if pixels == 0:
                summary.problems.append(Problem("warning", jfile, aitem, "segmentation covers no pixels"))
            summary.annotations += 1


def decode_problem(path: Path, channels: int = 1) -> tuple[str, str] | None:
    """Fully decode one image; (severity, message) if it is damaged, or gray
    where the split declares its windows as colour channels.

    JPEGs are decoded at reduced scale: the whole entropy-coded stream is
    still read (so truncation shows) but far fewer pixels are produced. PNGs
    are also verified, since a lost IEND or a bad CRC can still decode.
    """
    name = path.name
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft(None, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            if channels > 1 and im.mode not in ("RGB", "RGBA"):
                return "error", (f"{name} is a {im.mode} image, but the split declares {channels} "
                                 "CT windows as colour channels")
    except UnidentifiedImageError:
        return "error", f"corrupt image file: {name} (not a recognised image format)"
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
        return "error", f"corrupt image file: {name} ({_one_line(exc)})"
    try:
        with Image.open(path) as im:
            if im.format == "PNG":
                im.verify()
    except Exception as exc:
        return "warning", f"damaged image file: {name} decodes but fails verification ({_one_line(exc)})"
    return None


def _ignored_split_folders(root: Path, files: dict[str, Path]) -> list[Problem]:
    """Split folders that `find_split_files` skips without saying so."""
    if not root.is_dir():
        return []
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        name = _SPLIT_ALIASES.get(sub.name.lower(), sub.name.lower())
        if name not in SPLIT_NAMES:
            continue
        if name in files:
            used = files[name].parent
            if used.resolve() != sub.resolve():
                out.append(Problem("warning", str(sub), "",
                                   f"also names split '{name}'; ignored in favour of {used.name}/"))
            continue
        jsons = sorted(p.name for p in sub.glob("*.json"))
        if not jsons:
            why = f"no {ANNOTATION_FILE}; split ignored"
        else:
            why = f"{len(jsons)} .json files and none is {ANNOTATION_FILE}; split ignored"
        out.append(Problem("warning", str(sub), "", why))
    return out
