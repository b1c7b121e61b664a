"""Built-in synthetic head CT with hemorrhage.

Lets every part of hemoseg (data loading, training, volumetry, DICOM SEG
export, the demo) run and be tested without patient data. One seed fixes every
byte of the output:

    OUT/coco/{train,valid,test}/   Roboflow-style COCO export (JPEG + _annotations.coco.json),
                                   one CT window, or three as the colour channels
    OUT/dicom/<study>/             CT series, hashed file names (sort by position)
    OUT/dicom/<study>_labels.nii.gz  label volume (Z, Y, X), values 0..6
    OUT/dicom/ground_truth.json    spacing and exact per-class volumes (mL)

Synthetic images only resemble CT; nothing learned or measured on them says
anything about performance on patients.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from hemoseg.data.synth.coco_export import (BRAIN_ONLY, SPLITS, SliceSample, categories, coco_dict, generate_coco,
                                            make_split, mask_to_polygons, mask_to_rle)
from hemoseg.data.synth.dicom_export import (Study, class_volumes, generate_dicom, render_study,
                                             study_datasets)
from hemoseg.data.synth.phantom import (CLASS_NAMES, EDEMA, EDH, IPH, IVH, SAH, SDH, Head,
                                        render_plane, render_volume, sample_head, scanner_effects)
from hemoseg.errors import HemosegError

__all__ = [
    "CLASS_NAMES", "EDH", "IPH", "IVH", "SAH", "SDH", "EDEMA", "SPLITS",
    "Head", "SliceSample", "Study",
    "generate", "generate_coco", "generate_dicom", "make_split", "render_study", "study_datasets",
    "sample_head", "render_plane", "render_volume", "scanner_effects",
    "mask_to_polygons", "mask_to_rle", "coco_dict", "categories", "class_volumes",
]


def generate(out_dir, seed: int = 0, *, train: int = 300, valid: int = 50, test: int = 50,
             size: int = 256, studies: int = 3, slices: int = 32, dicom_size: int = 512,
             force: bool = False, windows=BRAIN_ONLY) -> dict:
    """Write the whole synthetic dataset under `out_dir` and return a summary.

    Refuses a non-empty `out_dir` unless `force`; with `force` only the
    `coco/` and `dicom/` folders it owns are replaced, so files from an earlier
    run with other counts cannot linger next to the new ones.
    """
    out = Path(out_dir)
    _check_args(train=train, valid=valid, test=test, studies=studies)
    if size < 32 or dicom_size < 32:
        raise HemosegError(f"image sizes must be at least 32 pixels (got {size} and {dicom_size})")
    if slices < 1:
        raise HemosegError(f"--slices must be at least 1 (got {slices})")
    if out.exists() and not out.is_dir():
        raise HemosegError("exists and is not a directory", path=out)
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise HemosegError("output directory is not empty (use --force to overwrite)", path=out)
        for sub in ("coco", "dicom"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
            elif (out / sub).exists():
                (out / sub).unlink()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    coco = generate_coco(out / "coco", seed, {"train": train, "valid": valid, "test": test}, size, windows)
    t1 = time.perf_counter()
    truth = generate_dicom(out / "dicom", seed, studies, slices, dicom_size) if studies else {}
    t2 = time.perf_counter()
    return {"out": str(out), "seed": seed, "coco": coco, "dicom": truth,
            "seconds": {"coco": t1 - t0, "dicom": t2 - t1}}


def _check_args(**counts):
    for name, v in counts.items():
        if int(v) < 0:
            raise HemosegError(f"--{name} must not be negative (got {v})")
