"""A tiny, unambiguous segmentation task (bright discs on noisy tissue) that a
working training loop must learn within seconds; broken training cannot."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


def make_blob_export(root: Path, n: dict | None = None, size: int = 64, seed: int = 0) -> Path:
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
                img[mask > 0] += 90
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                poly = [float(v) for v in contours[0].reshape(-1)]
                anns.append({"id": len(anns), "image_id": i, "category_id": 1, "segmentation": [poly],
                             "area": float(mask.sum()), "bbox": [0, 0, 0, 0], "iscrowd": 0})
            cv2.imwrite(str(folder / f"{split}{i}.png"), np.clip(img, 0, 255).astype(np.uint8))
            images.append({"id": i, "file_name": f"{split}{i}.png", "height": size, "width": size})
        (folder / "_annotations.coco.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": cats}))
    return root
