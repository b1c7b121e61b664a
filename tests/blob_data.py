"""A tiny, unambiguous segmentation task (bright discs on noisy tissue) that a
working training loop must learn within seconds; broken training cannot."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


def make_blob_export(root: Path, n: dict | None = None, size: int = 64, seed: int = 0,
                     windows: list | None = None) -> Path:
    """windows: a 3-window export instead (RGB, declared in the info block) whose
    discs have the luminance of their surroundings: only a model that keeps the
    colour channels apart can find them."""
    n = n or {"train": 40, "valid": 10, "test": 10}
    rng = np.random.default_rng(seed)
    cats = [{"id": 0, "name": "lesions", "supercategory": "none"},
            {"id": 1, "name": "bleed", "supercategory": "lesions"}]
    for split, count in n.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(count):
            img = rng.normal(100, 12, (size, size))
            if i % 5:  # one image in five is a negative
                cx, cy = rng.integers(12, size - 12, 2)
                r = int(rng.integers(5, 10))
                mask = np.zeros((size, size), np.uint8)
                cv2.circle(mask, (int(cx), int(cy)), r, 1, -1)
                img[mask > 0] += 90 if windows is None else 0
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                poly = [float(v) for v in contours[0].reshape(-1)]
                anns.append({"id": len(anns), "image_id": i, "category_id": 1, "segmentation": [poly],
                             "area": float(mask.sum()), "bbox": [0, 0, 0, 0], "iscrowd": 0})
            if windows is not None:
                img = _isoluminant_rgb(img, mask if i % 5 else None)
            cv2.imwrite(str(folder / f"{split}{i}.png"), np.clip(img, 0, 255).astype(np.uint8))
            images.append({"id": i, "file_name": f"{split}{i}.png", "height": size, "width": size})
        doc = {"images": images, "annotations": anns, "categories": cats}
        if windows is not None:
            doc["info"] = {"hemoseg_windows": windows}
        (folder / "_annotations.coco.json").write_text(json.dumps(doc))
    return root


def _isoluminant_rgb(gray: np.ndarray, mask) -> np.ndarray:
    """BGR for cv2: the disc is +60 in green and -118 in red, which cancels in
    ITU-R 601 luminance (0.299 R + 0.587 G + 0.114 B)."""
    r, g, b = gray + 40, gray.copy(), gray.copy()
    if mask is not None:
        g[mask > 0] += 60
        r[mask > 0] -= 60 * 0.587 / 0.299
    return np.dstack([b, g, r])
