"""Synthetic slices written as a Roboflow-style COCO export.

Each split draws its own heads (patient-disjoint by construction: heads are
seeded by split and index), takes a few axial slices from each, and writes
brain-window JPEGs plus `_annotations.coco.json` laid out the way Roboflow
exports them, so the real-data loader is exercised by the synthetic set. With
three windows (e.g. brain, subdural, bone) each JPEG holds one window per
colour channel, without chroma subsampling (which would blur two of them), and
the JSON's info block declares them (coco.py).

Polygons are traced on a 2x nearest-upsampled mask and mapped back, which puts
every vertex 0.25 px outside the centres of the boundary pixels; pycocotools
then re-rasterises exactly the original pixels (plain findContours vertices
lose about half of each boundary pixel, which ruins thin lesions). Holes are
kept by joining each hole to its outer contour with a zero-width bridge (a
"keyhole" polygon), because COCO merges separate polygons by union.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hemoseg.cpus import cpu_threads
from hemoseg.data.coco import SPLIT_NAMES, WINDOWS_KEY, roboflow_categories
from hemoseg.data.preprocessing import NAMED_WINDOWS, Window, windowed_image
from hemoseg.data.rasterize import mask_bbox, mask_to_rle
from hemoseg.data.synth.phantom import (CLASS_NAMES, EDEMA, EDH, IPH, IVH, SAH, SDH, render_plane,
                                        sample_head, scanner_effects)

SPLITS = SPLIT_NAMES
_SPLIT_CODE = {"train": 1, "valid": 2, "test": 3}
SLICES_PER_HEAD = 4
EMPTY_FRACTION = 0.22  # share of heads without any lesion (their slices are negatives)
PRIMARY = (IPH, SDH, EDH, IVH, SAH)  # edema comes with IPH
RLE_CLASSES = (EDEMA,)  # rings: a polygon cannot describe them
JPEG_QUALITY = 95
_FIXED_DATE = "2024-01-01T00:00:00+00:00"  # never the clock: outputs must be reproducible
BRAIN_ONLY: tuple[Window, ...] = (NAMED_WINDOWS["brain"],)


@dataclass
class SliceSample:
    file_name: str
    head: str
    z: float
    spacing: float
    label: np.ndarray  # uint8 (H, W), 0..6
    image: np.ndarray  # uint8 (H, W) under one window, or (H, W, 3): one window per channel


def make_split(seed: int, split: str, count: int, size: int = 256,
               windows: tuple[Window, ...] = BRAIN_ONLY) -> list[SliceSample]:
    """The slices of one split, in memory. Same arguments -> same arrays, however
    many processes render them: each head draws from its own seeded stream."""
    code = _SPLIT_CODE[split]
    plan = np.random.default_rng([seed, code, 0])
    order = [int(k) for k in plan.permutation(PRIMARY)]
    jobs = []
    n_heads = math.ceil(count / SLICES_PER_HEAD)
    n_lesion_heads = 0
    for h in range(n_heads):
        # evenly spaced normal heads; the 4th head is the first, so small splits get negatives too
        normal = math.floor((h + 2.5) * EMPTY_FRACTION) > math.floor((h + 1.5) * EMPTY_FRACTION)
        primary = None
        if not normal:
            primary = order[n_lesion_heads % len(order)]
            n_lesion_heads += 1
        jobs.append((seed, split, h, primary, min(SLICES_PER_HEAD, count - h * SLICES_PER_HEAD), size, windows))
    return [smp for head in _map(_head_slices, jobs) for smp in head]


def _head_slices(seed: int, split: str, h: int, primary: int | None, n_slots: int, size: int,
                 windows: tuple[Window, ...]) -> list[SliceSample]:
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], h + 1])
    kinds: list[int] = []
    if primary is not None:
        kinds = [primary] + [k for k in PRIMARY if k != primary and rng.random() < 0.25]
        if primary == IPH:
            kinds.append(EDEMA)  # so every split surely has edema, and slices aimed at it
    head = sample_head(rng, kinds)
    fov = max(rng.uniform(215, 245), head.min_fov())
    spacing = fov / size
    head_name = f"synth-{split}-{h:04d}"
    samples = []
    for k, z in enumerate(_choose_slices(head, rng, kinds, n_slots, fov)):
        hu, lab = render_plane(head, z, (size, size), spacing)
        hu = scanner_effects(hu, rng, spacing, head.noise_std, head.blur_mm)
        digest = hashlib.md5(f"{seed}/{split}/{h}/{k}".encode()).hexdigest()
        samples.append(SliceSample(
            file_name=f"{head_name}_{k:02d}_png.rf.{digest}.jpg", head=head_name, z=float(z),
            spacing=float(spacing), label=lab, image=windowed_image(hu, windows)))
    return samples


PARALLEL_FROM_HEADS = 64
"""Smaller splits render in this process: starting workers would cost more than it saves."""


def _map(fn, jobs: list[tuple]) -> list:
    """fn(*job) for each job, in order, over this process's cores when there are many jobs
    (the demo's 1600 training slices: 39 s -> about 20 s on 2 cores)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = min(cpu_threads(), len(jobs) // 8)
    if workers < 2 or len(jobs) < PARALLEL_FROM_HEADS or "forkserver" not in multiprocessing.get_all_start_methods():
        return [fn(*job) for job in jobs]

    # forkserver: workers start from a clean process, never a fork of one holding threads.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        return list(pool.map(fn, *zip(*jobs), chunksize=max(len(jobs) // (4 * workers), 1)))


def _choose_slices(head, rng, kinds, n_slots, fov, probe=48, levels=14) -> list[float]:
    """Axial heights for a head's slices. Lesion heads: each slice aims at one
    of the head's lesions, found with a cheap low-resolution probe, so every
    planned class really shows up. Normal heads: anywhere from the skull base
    to the vertex, because a CT study (and a Roboflow export of one) has those
    slices too; a model never shown them paints lesions there."""
    s = head.scale
    zc = head.center[2]
    lo, hi = zc - 28 * s, zc + 62 * s
    if not kinds:
        base, top = zc - head.base * head.axes[2], zc + head.axes[2] + head.scalp
        return sorted(float(z) for z in rng.uniform(base, top, n_slots))
    grid = np.linspace(lo, hi, levels)
    counts = np.zeros((levels, 7), dtype=np.int64)
    for i, z in enumerate(grid):
        _, lab = render_plane(head, float(z), (probe, probe), fov / probe)
        counts[i] = np.bincount(lab.ravel(), minlength=7)
    step = grid[1] - grid[0]
    used: set[int] = set()
    out = []
    for j in range(n_slots):
        target = kinds[j % len(kinds)]
        col = counts[:, target]
        cand = [i for i in np.flatnonzero(col >= max(1, 0.3 * col.max())) if i not in used]
        if not cand:
            cand = [i for i in np.flatnonzero(col > 0)] or list(range(levels))
        i = int(rng.choice(cand))
        used.add(i)
        out.append(float(grid[i] + rng.uniform(-0.3, 0.3) * step))
    return sorted(out)


# --------------------------------------------------------------------------
# masks -> COCO segmentation
# --------------------------------------------------------------------------

def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """One flat [x0, y0, x1, y1, ...] polygon per connected component (8-
    connectivity), holes included as keyholes. Coordinates are in pixel units
    with pixel (c, r) covering [c, c+1) x [r, r+1), as pycocotools expects."""
    up = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    contours, hier = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    hier = hier[0]
    pts = [(c.reshape(-1, 2).astype(np.float64) + 0.5) / 2 for c in contours]
    polys = []
    for i in range(len(contours)):
        if hier[i][3] >= 0:
            continue
        holes = [pts[j] for j in range(len(contours)) if hier[j][3] == i]
        poly = _keyhole(pts[i], holes)
        polys.append([float(v) for v in poly.ravel()])
    return polys


def _keyhole(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """Splice each hole into the outline at the closest vertex pair; the doubled
    bridge edge encloses no area under either even-odd or non-zero filling."""
    poly = outer
    for hole in holes:
        d = ((poly[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        ring = np.concatenate([hole[j:], hole[: j + 1]])
        poly = np.concatenate([poly[: i + 1], ring, poly[i:]])
    return poly


def categories() -> list[dict]:
    return roboflow_categories(CLASS_NAMES)


def coco_dict(samples: list[SliceSample], description: str = "hemoseg synthetic head CT",
              windows: tuple[Window, ...] = BRAIN_ONLY) -> dict:
    images, anns = [], []
    for img_id, smp in enumerate(samples):
        h, w = smp.label.shape
        images.append({"id": img_id, "license": 1, "file_name": smp.file_name, "height": h, "width": w,
                       "date_captured": _FIXED_DATE})
        for cls in CLASS_NAMES:
            m = smp.label == cls
            if not m.any():
                continue
            if cls in RLE_CLASSES:
                seg = mask_to_rle(m)
            else:
                seg = mask_to_polygons(m)
            anns.append({"id": len(anns), "image_id": img_id, "category_id": cls, "bbox": mask_bbox(m),
                         "area": int(m.sum()), "segmentation": seg, "iscrowd": 0})
    return {
        "info": {"year": "2024", "version": "1", "description": description,
                 "contributor": "hemoseg synth", "url": "", "date_created": _FIXED_DATE,
                 WINDOWS_KEY: [list(w) for w in windows]},
        "licenses": [{"id": 1, "url": "https://creativecommons.org/publicdomain/zero/1.0/",
                      "name": "Public Domain"}],
        "categories": categories(),
        "images": images,
        "annotations": anns,
    }


def write_split(samples: list[SliceSample], split_dir: Path, description: str,
                windows: tuple[Window, ...] = BRAIN_ONLY) -> dict:
    split_dir.mkdir(parents=True, exist_ok=True)
    for smp in samples:
        Image.fromarray(smp.image).save(split_dir / smp.file_name, format="JPEG",
                                        quality=JPEG_QUALITY, subsampling=0)
    coco = coco_dict(samples, description, windows)
    (split_dir / "_annotations.coco.json").write_text(json.dumps(coco))
    return coco


def generate_coco(out_dir, seed: int = 0, counts: dict | None = None, size: int = 256,
                  windows: tuple[Window, ...] = BRAIN_ONLY) -> dict:
    """Write OUT/{train,valid,test}/ and return per-split image and class counts."""
    counts = counts or {"train": 300, "valid": 50, "test": 50}
    out_dir = Path(out_dir)
    summary = {}
    for split in SPLITS:
        n = int(counts.get(split, 0))
        samples = make_split(seed, split, n, size, windows)
        coco = write_split(samples, out_dir / split, f"hemoseg synthetic head CT, seed {seed}, {split}", windows)
        per_class = {name: 0 for name in CLASS_NAMES.values()}
        for a in coco["annotations"]:
            per_class[CLASS_NAMES[a["category_id"]]] += 1
        empty = sum(1 for smp in samples if not smp.label.any())
        summary[split] = {"images": len(samples), "heads": len({smp.head for smp in samples}),
                          "empty_images": empty, "images_per_class": per_class}
    return summary
