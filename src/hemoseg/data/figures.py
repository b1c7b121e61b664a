"""Dataset statistics and the figures drawn from them (`hemoseg data stats`).

Figures (file names in OUT):
  class_distribution.png  per-class, per-split counts (the paper's Figure 2)
  samples.png             images with coloured mask overlays (Figure 3)
  augmentations.png       augmented training samples, masks outlined (Figure 4)
and stats.json with the numbers behind the table.

Matplotlib is driven through `Figure` objects, never pyplot, so drawing keeps
no global state and works in threads (the server) and without a display.
"""

from __future__ import annotations

import colorsys
import json
import math
import textwrap
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from hemoseg.data.coco import SPLIT_NAMES, ClassList, Dataset, ImageRecord, class_list
from hemoseg.data.rasterize import rasterize

FIGURE_FILES = ("class_distribution.png", "samples.png", "augmentations.png", "stats.json")

# Okabe-Ito colours (distinguishable with common colour-vision deficiencies),
# reordered so that a single-class (binary) mask is the conventional red and
# leaving out black/grey, which vanish on CT.
_PALETTE = (
    (213, 94, 0),    # vermillion
    (86, 180, 233),  # sky blue
    (0, 158, 115),   # bluish green
    (240, 228, 66),  # yellow
    (204, 121, 167),  # reddish purple
    (0, 114, 178),   # blue
    (230, 159, 0),   # orange
)
_SPLIT_COLORS = {"train": "#1f4e79", "valid": "#e08a00", "test": "#3a9e5f"}
# A class distribution spanning more than this ratio is drawn on a log axis.
_LOG_RATIO = 50.0


def class_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 RGB, class k always gets row k.

    The one palette for every mask drawing in hemoseg, so a class keeps its
    colour across figures, predictions and the web viewer. Beyond the fixed
    colours, hues are spread by the golden ratio so they stay distinct.
    """
    out = [_PALETTE[k] for k in range(min(n, len(_PALETTE)))]
    for k in range(len(_PALETTE), n):
        hue = (0.11 + 0.618033988749895 * k) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return np.array(out, dtype=np.uint8).reshape(n, 3)


# --- statistics ------------------------------------------------------------

def dataset_classes(ds: Dataset) -> ClassList:
    """Classes of all splits together, in category-id order, so an annotation
    in any split has a colour and a column even if train lacks its class."""
    by_id: dict[int, str] = {}
    for split in ds.splits.values():
        cl = class_list(split.categories)
        for cid, name in zip(cl.coco_ids, cl.names):
            by_id.setdefault(cid, name)
    ids = sorted(by_id)
    return ClassList(tuple(by_id[i] for i in ids), tuple(ids))


def compute_stats(ds: Dataset) -> dict:
    classes = dataset_classes(ds)
    splits = {}
    order = {name: k for k, name in enumerate(SPLIT_NAMES)}
    for name, split in sorted(ds.splits.items(), key=lambda kv: order.get(kv[0], len(order))):
        ann: Counter = Counter()
        img: Counter = Counter()
        negatives = 0
        for rec in split.images:
            ids = [a["category_id"] for a in rec.annotations]
            negatives += not ids
            ann.update(ids)
            img.update(set(ids))
        splits[name] = {
            "images": len(split.images),
            "negatives": negatives,
            "annotations": sum(ann.values()),
            "classes": {cname: {"annotations": ann[cid], "images": img[cid]}
                        for cname, cid in zip(classes.names, classes.coco_ids)},
        }
    total = {key: sum(s[key] for s in splits.values()) for key in ("images", "negatives", "annotations")}
    total["classes"] = {cname: {key: sum(s["classes"][cname][key] for s in splits.values())
                                for key in ("annotations", "images")} for cname in classes.names}
    problems = ds.problems
    return {
        "dataset": str(ds.root),
        "classes": [{"name": n, "coco_id": i} for n, i in zip(classes.names, classes.coco_ids)],
        "splits": splits,
        "total": total,
        "problems": {"errors": sum(p.severity == "error" for p in problems),
                     "warnings": sum(p.severity == "warning" for p in problems)},
    }


def format_table(stats: dict) -> str:
    """Aligned text table: per split an annotation and an image column.

    "img" counts images containing the class; "negatives" are images without
    any annotation, so per split: images = negatives + images with a lesion.
    """
    groups = list(stats["splits"]) + ["total"]
    cols = {g: stats["total"] if g == "total" else stats["splits"][g] for g in groups}
    rows: list[tuple[str, list[str]]] = []
    for c in stats["classes"]:
        cells = []
        for g in groups:
            v = cols[g]["classes"][c["name"]]
            cells += [str(v["annotations"]), str(v["images"])]
        rows.append((c["name"], cells))
    rows.append(("negatives (no annotation)", [x for g in groups for x in ("-", str(cols[g]["negatives"]))]))
    rows.append(("all", [x for g in groups for x in (str(cols[g]["annotations"]), str(cols[g]["images"]))]))
    name_w = max([len("class")] + [len(r[0]) for r in rows])
    cell_w = max([3] + [len(x) for _, cells in rows for x in cells])
    group_w = 2 * cell_w + 2
    sep = "   "
    head1 = "class".ljust(name_w) + "".join(sep + g.center(group_w) for g in groups)
    head2 = " " * name_w + "".join(sep + "ann".rjust(cell_w) + "  " + "img".rjust(cell_w) for _ in groups)
    lines = [head1.rstrip(), head2.rstrip(), "-" * len(head2)]
    for name, cells in rows:
        pairs = [cells[i:i + 2] for i in range(0, len(cells), 2)]
        lines.append(name.ljust(name_w) + "".join(sep + a.rjust(cell_w) + "  " + b.rjust(cell_w)
                                                  for a, b in pairs))
    return "\n".join(lines)


# --- drawing helpers ---------------------------------------------------------

def overlay_masks(gray: np.ndarray, masks: np.ndarray, colors: np.ndarray,
                  alpha: float = 0.4, fill: bool = True, outline: bool = True) -> np.ndarray:
    """Grayscale (H,W) + multilabel masks (K,H,W) -> RGB uint8.

    Classes are blended one after another, so where lesions overlap both
    colours mix and both outlines stay visible.
    """
    rgb = np.repeat(np.asarray(gray, np.float32)[..., None], 3, axis=2)
    colors = np.asarray(colors, np.float32)
    if fill:
        for k, m in enumerate(masks):
            sel = np.asarray(m, bool)
            rgb[sel] = (1 - alpha) * rgb[sel] + alpha * colors[k]
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if outline:
        thickness = max(1, round(max(gray.shape) / 256))
        for k, m in enumerate(masks):
            contours, _ = cv2.findContours(np.asarray(m, np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, tuple(int(v) for v in colors[k]), thickness)
    return out


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _legend_handles(classes: ClassList, colors: np.ndarray):
    from matplotlib.patches import Patch

    return [Patch(facecolor=colors[k] / 255.0, edgecolor="none", label=name)
            for k, name in enumerate(classes.names)]


def _add_legend(fig, classes: ClassList, colors: np.ndarray) -> None:
    if len(classes):
        fig.legend(handles=_legend_handles(classes, colors), loc="outside lower center",
                   ncol=min(len(classes), 5), fontsize=8, frameon=False)


def _empty(fig, text: str) -> None:
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")


# --- Figure 2 ----------------------------------------------------------------

def plot_class_distribution(stats: dict, path: Path, scale: str = "auto") -> bool:
    """Grouped bars (one bar per split) of annotations and of images per class.

    Returns whether a log axis was used: "auto" switches to log when the
    largest non-zero count exceeds the smallest by more than `_LOG_RATIO`, so
    rare classes stay readable next to common ones.
    """
    names = [c["name"] for c in stats["classes"]]
    splits = list(stats["splits"])
    panels = [
        ("Annotations per class", names,
         {s: [stats["splits"][s]["classes"][n]["annotations"] for n in names] for s in splits}),
        ("Images containing the class", names + ["negatives"],
         {s: [stats["splits"][s]["classes"][n]["images"] for n in names] + [stats["splits"][s]["negatives"]]
          for s in splits}),
    ]
    values = [v for _, _, d in panels for vs in d.values() for v in vs if v > 0]
    log = scale == "log" or (scale == "auto" and bool(values) and max(values) / min(values) > _LOG_RATIO)

    from matplotlib.ticker import FuncFormatter

    width = max(8.0, 1.1 * (len(names) + 1) * 2)
    fig = _new_figure(width, 4.6)
    axes = fig.subplots(1, 2)
    bar_w = 0.8 / max(1, len(splits))
    for ax, (title, labels, data) in zip(axes, panels):
        x = np.arange(len(labels))
        for j, s in enumerate(splits):
            heights = np.asarray(data[s], float)
            pos = x - 0.4 + bar_w * (j + 0.5)
            shown = heights > 0 if log else np.ones_like(heights, bool)
            bars = ax.bar(pos[shown], heights[shown], bar_w, label=s,
                          color=_SPLIT_COLORS.get(s, f"C{j}"))
            ax.bar_label(bars, labels=[str(int(h)) for h in heights[shown]], fontsize=7, padding=1)
        ax.set_xticks(x, [textwrap.fill(lbl, 16, break_long_words=False) for lbl in labels], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("count (log scale)" if log else "count")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.7)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.margins(y=0.15)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].legend(title="split", fontsize=8, title_fontsize=8)
    fig.suptitle("Class distribution per split", fontsize=11)
    fig.savefig(path)
    return log


# --- Figure 3 ----------------------------------------------------------------

def pick_samples(ds: Dataset, classes: ClassList, n: int, rng: np.random.Generator,
                 splits: tuple[str, ...] | None = None) -> list[tuple[str, ImageRecord]]:
    """Up to n (split, record) pairs: every class shown at least once if it
    can be (rarest class first), then more images with lesions, then negatives."""
    pool = [(s, r) for s, split in ds.splits.items() if splits is None or s in splits for r in split.images]
    if n <= 0 or not pool:
        return []
    order = list(rng.permutation(len(pool)))
    holders: dict[int, list[int]] = {cid: [] for cid in classes.coco_ids}
    for i in order:
        for cid in {a["category_id"] for a in pool[i][1].annotations}:
            holders.setdefault(cid, []).append(i)
    chosen: list[int] = []
    covered: set = set()
    for cid in sorted(holders, key=lambda c: len(holders[c])):
        free = [i for i in holders[cid] if i not in chosen]
        if cid not in covered and free and len(chosen) < n:
            chosen.append(free[0])
            covered |= {a["category_id"] for a in pool[free[0]][1].annotations}
    positives = [i for i in order if pool[i][1].annotations and i not in chosen]
    negatives = [i for i in order if not pool[i][1].annotations]
    chosen += (positives + negatives)[: n - len(chosen)]
    return [pool[i] for i in chosen]


def _load_with_masks(rec: ImageRecord, classes: ClassList, channels: int):
    """The image as people read it (a multi-window image's first window) and its masks."""
    from hemoseg.data.images import load_display
    from hemoseg.errors import HemosegError

    try:
        img = load_display(rec.path, channels)[..., 0]
    except HemosegError:
        return None
    if img.shape != (rec.height, rec.width):
        return None
    return img, rasterize(rec, classes, "multilabel")


def plot_samples(ds: Dataset, classes: ClassList, path: Path, n: int = 12, seed: int = 0,
                 cols: int = 4) -> int:
    """Preview grid with filled, outlined masks and a class legend; returns tiles drawn."""
    rng = np.random.default_rng(seed)
    colors = class_colors(len(classes))
    tiles = []
    for split, rec in pick_samples(ds, classes, n, rng):
        loaded = _load_with_masks(rec, classes, len(ds.splits[split].windows))
        if loaded is not None:
            tiles.append((f"{split}/{rec.file_name}", overlay_masks(loaded[0], loaded[1], colors)))
    cols = max(1, min(cols, len(tiles)))
    rows = max(1, math.ceil(len(tiles) / cols))
    fig = _new_figure(3.0 * cols, 3.0 * rows + 0.6)
    if not tiles:
        _empty(fig, "no usable images")
    else:
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax in axes:
            ax.axis("off")
        for ax, (title, rgb) in zip(axes, tiles):
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(_short(title, 34), fontsize=7)
        _add_legend(fig, classes, colors)
    fig.suptitle("Sample images with annotation overlays", fontsize=11)
    fig.savefig(path)
    return len(tiles)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


# --- Figure 4 ----------------------------------------------------------------

def plot_augmentations(ds: Dataset, classes: ClassList, path: Path, seed: int = 0,
                       rows: int = 3, variants: int = 5, policy: str = "default") -> int:
    """Each row: an original training image, then `variants` augmented copies,
    masks outlined so the geometric transform of the label is visible."""
    from hemoseg.data.augment import build_augmentation

    rng = np.random.default_rng(seed)
    only = ("train",) if ds.splits.get("train") and ds.splits["train"].images else None
    aug = build_augmentation(policy, seed)
    colors = class_colors(len(classes))
    grid = []
    for split, rec in pick_samples(ds, classes, rows, rng, only):
        loaded = _load_with_masks(rec, classes, len(ds.splits[split].windows))
        if loaded is None:
            continue
        img, masks = loaded
        row = [("original", overlay_masks(img, masks, colors, fill=False))]
        # OpenCV cannot warp a 0-channel mask, so a class-less export gets a blank one.
        if len(masks):
            hwk = np.ascontiguousarray(masks.transpose(1, 2, 0))
        else:
            hwk = np.zeros((*img.shape, 1), np.uint8)
        for v in range(variants):
            if aug is None:
                a_img, a_masks = img, masks
            else:
                out = aug(image=img, mask=hwk)
                a_masks = np.asarray(out["mask"]).reshape(hwk.shape).transpose(2, 0, 1)[: len(masks)]
                a_img = out["image"]
            row.append((f"augmented {v + 1}", overlay_masks(a_img, a_masks, colors, fill=False)))
        grid.append((rec.file_name, row))
    cols = variants + 1
    fig = _new_figure(2.2 * cols, 2.3 * max(1, len(grid)) + 0.6)
    if not grid:
        _empty(fig, "no usable images")
    else:
        axes = fig.subplots(len(grid), cols, squeeze=False)
        for r, (name, row) in enumerate(grid):
            for c, (title, rgb) in enumerate(row):
                ax = axes[r, c]
                ax.imshow(rgb, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(title, fontsize=7)
            axes[r, 0].set_ylabel(_short(name, 22), fontsize=7)
        _add_legend(fig, classes, colors)
    fig.suptitle(f"Augmentation policy '{policy}' (seed {seed})", fontsize=11)
    fig.savefig(path)
    return len(grid)


def write_stats_json(stats: dict, path: Path) -> None:
    path.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
