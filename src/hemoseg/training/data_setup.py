"""Turn a dataset folder into cached train/valid arrays, or a clear error."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from hemoseg.data.coco import SPLIT_NAMES, ClassList, Dataset, load_dataset
from hemoseg.data.dataset import CachedSplit, cache_split, skipped_summary
from hemoseg.data.preprocessing import Window, describe_windows
from hemoseg.errors import HemosegError


@dataclass
class TrainingData:
    classes: ClassList
    windows: tuple[Window, ...]
    train: CachedSplit
    valid: CachedSplit
    summary: dict


def annotated_classes(split) -> Counter:
    return Counter(a["category_id"] for r in split.images for a in r.annotations)


def check_class_consistency(ds: Dataset) -> ClassList:
    train = ds.splits.get("train")
    if train is None or not train.images:
        raise HemosegError("dataset has no usable training images", ds.root)
    classes = train.classes
    if not len(classes):
        raise HemosegError("training split defines no classes", train.json_path)
    train_counts = annotated_classes(train)
    for name, split in sorted(ds.splits.items(), key=lambda kv: SPLIT_NAMES.index(kv[0])):
        if name == "train":
            continue
        if split.windows != train.windows:
            raise HemosegError(f"split '{name}' images carry windows {describe_windows(split.windows)}, "
                               f"train's carry {describe_windows(train.windows)}", split.json_path)
        if split.classes != classes:
            extra = sorted(set(split.classes.names) - set(classes.names))
            raise HemosegError(
                f"split '{name}' has classes that differ from train"
                + (f" (not in train: {', '.join(extra)})" if extra else f" ({split.classes.names} vs {classes.names})"),
                split.json_path)
        missing = [classes.names[classes.index_of(c)] for c in annotated_classes(split) if not train_counts.get(c)]
        if missing:
            raise HemosegError(
                f"class(es) {', '.join(sorted(missing))} appear in '{name}' but have no training annotation",
                split.json_path)
    return classes


def prepare_training_data(path, mode: str, size: int, seed: int, log=print) -> TrainingData:
    ds = load_dataset(path)
    classes = check_class_consistency(ds)
    train = cache_split(ds.splits["train"], classes, mode, size)
    if "valid" in ds.splits and ds.splits["valid"].images:
        valid = cache_split(ds.splits["valid"], classes, mode, size)
    else:
        # No validation split: hold out a fixed 10% of training images.
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(train))
        n_val = max(1, len(train) // 10)
        if len(train) - n_val < 1:
            raise HemosegError("too few training images to hold out a validation set", path)
        valid = _subset(train, order[:n_val], "valid (held out from train)")
        train = _subset(train, order[n_val:], "train")
        log(f"no validation split: holding out {n_val} training images")
    log(f"train: {len(train)} images ({skipped_summary(train.skipped)}); "
        f"valid: {len(valid)} images ({skipped_summary(valid.skipped)})")
    summary = {
        "dataset": str(path),
        "classes": list(classes.names),
        "windows": [list(w) for w in ds.splits["train"].windows],
        "train_images": len(train),
        "valid_images": len(valid),
        "train_images_with_lesion": int(train.has_lesion().sum()),
        "train_pixels_per_class": train.class_pixel_counts(len(classes)).tolist(),
        "skipped": {"train": [str(p) for p in train.skipped if p.severity == "error"],
                    "valid": [str(p) for p in valid.skipped if p.severity == "error"]},
        "cache_seconds": round(train.build_seconds + valid.build_seconds, 3),
    }
    return TrainingData(classes, ds.splits["train"].windows, train, valid, summary)


def _subset(c: CachedSplit, idx, name: str) -> CachedSplit:
    idx = np.sort(idx)
    return CachedSplit(name, c.images[idx], c.targets[idx], [c.file_names[i] for i in idx], c.mode,
                       c.skipped if name == "train" else [], c.build_seconds)
