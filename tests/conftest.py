"""Shared fixtures. Real data is optional; tiny exports are generated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def one_thread():
    """In-process training on a small shared CPU: extra intra-op threads only
    fight other processes for cores (steps get ~20x slower under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def shared_data() -> Path:
    """The read-only real datasets next to the repository (never copied in)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("real data not available: ../shared/data is absent")
    return SHARED_DATA


class TinyExport:
    """Writes Roboflow-style splits of small generated PNGs (a gradient, so
    images differ) with one square annotation per image by default."""

    CATEGORIES = [
        {"id": 0, "name": "lesions", "supercategory": "none"},
        {"id": 1, "name": "bleed", "supercategory": "lesions"},
        {"id": 2, "name": "edema", "supercategory": "lesions"},
    ]

    @staticmethod
    def square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    def split(self, folder: Path, n_images: int = 2, size: int = 32, annotate: bool = True) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n_images):
            pixels = ((np.arange(size * size).reshape(size, size) * (i + 3)) % 256).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i}.png")
            images.append({"id": i, "file_name": f"img{i}.png", "height": size, "width": size})
            if annotate:
                anns.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "iscrowd": 0,
                             "segmentation": self.square(4, 4, 12, 12), "area": 64.0, "bbox": [4, 4, 8, 8]})
        doc = {"images": images, "annotations": anns, "categories": [dict(c) for c in self.CATEGORIES]}
        self.save(folder, doc)
        return doc

    @staticmethod
    def save(folder: Path, doc) -> Path:
        path = folder / "_annotations.coco.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        return path


@pytest.fixture
def tiny_export() -> TinyExport:
    return TinyExport()


def pytest_configure(config):
    # pycocotools' decode trips a NumPy 2 deprecation on every call; it is
    # harmless and would bury real warnings.
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
