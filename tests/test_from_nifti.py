"""`hemoseg data from-nifti`: CT + label volumes -> a COCO export that trains."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from predict_fixtures import ct_volume

from hemoseg.cli.main import main
from hemoseg.data.coco import load_dataset
from hemoseg.data.from_volumes import assign_splits
from hemoseg.data.rasterize import rasterize

AFFINE = np.diag([0.7, 0.7, 3.0, 1.0])  # stored RAS
CLASSES = "1=Intraparenchymal hemorrhage,2=Subdural hemorrhage"


def save(path, zhw, dtype):
    """(Z, H, W) in hemoseg's display order -> a RAS NIfTI that read_nifti turns back into it."""
    data = zhw.transpose(2, 1, 0)[::-1, ::-1, :]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data.astype(dtype)), AFFINE), str(path))


def labels_for(vol):
    lab = np.zeros(vol.shape, np.uint8)
    lab[vol == 70] = 1
    lab[2, 10:14, 40:50] = 2  # a second class on one slice
    return lab


@pytest.fixture
def volumes(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    truth = {}
    for i in range(5):
        vol = ct_volume(z=8)
        vol[:, 0, 0] = 500 + i  # tell the volumes apart
        lab = labels_for(vol)
        save(images / f"p{i}.nii.gz", vol, np.int16)
        save(labels / f"p{i}.nii.gz", lab, np.uint8)
        truth[f"p{i}"] = (vol, lab)
    return images, labels, truth


def convert(images, labels, out, *extra):
    return main(["data", "from-nifti", str(images), str(labels), "--out", str(out), "--classes", CLASSES,
                 "--valid", "0.2", "--test", "0.2", *extra])


def test_volumes_become_patient_disjoint_splits_with_exact_masks(volumes, tmp_path, capsys):
    images, labels, truth = volumes
    out = tmp_path / "coco"
    assert convert(images, labels, out, "--negatives", "1") == 0
    stdout = capsys.readouterr().out
    assert "train: 3 volume(s)" in stdout and "valid: 1 volume(s)" in stdout and "test: 1 volume(s)" in stdout
    assert main(["data", "check", str(out)]) == 0  # a clean export by hemoseg's own checker
    ds = load_dataset(out)
    seen = {}
    for split, sp in ds.splits.items():
        assert list(sp.classes.names) == ["Intraparenchymal hemorrhage", "Subdural hemorrhage"]
        for rec in sp.images:
            name, z = rec.path.stem.rsplit("_z", 1)
            seen.setdefault(name, set()).add(split)
            vol, lab = truth[name]
            np.testing.assert_array_equal(rasterize(rec, sp.classes, "multiclass"), lab[int(z)])
            img = np.asarray(Image.open(rec.path))
            np.testing.assert_array_equal(img, np.clip(np.rint((vol[int(z)] - 0) * 255 / 80), 0, 255))
    assert all(len(s) == 1 for s in seen.values()) and set(seen) == set(truth)  # no patient in two splits
    # --negatives 1: every slice that shows the head is kept, lesion or not
    assert sum(len(sp.images) for sp in ds.splits.values()) == 5 * 8


def test_negatives_are_sampled_and_windows_recorded(volumes, tmp_path, capsys):
    images, labels, _ = volumes
    out = tmp_path / "coco"
    assert convert(images, labels, out, "--negatives", "0", "--windows", "brain,subdural,bone") == 0
    ds = load_dataset(out)
    recs = [r for sp in ds.splits.values() for r in sp.images]
    assert len(recs) == 5 * 3  # lesion slices only: 1, 2, 3 of each volume
    assert all(r.annotations for r in recs)
    info = json.loads((out / "train" / "_annotations.coco.json").read_text())["info"]
    assert info["hemoseg_windows"] == [[40, 80], [80, 200], [600, 2800]]
    assert np.asarray(Image.open(recs[0].path)).shape == (64, 64, 3)
    # same seed, same split
    again = tmp_path / "again"
    assert convert(images, labels, again, "--negatives", "0", "--windows", "brain,subdural,bone") == 0
    for s in ("train", "valid", "test"):
        assert sorted(p.name for p in (out / s).glob("*.png")) == sorted(p.name for p in (again / s).glob("*.png"))


def test_bad_pairs_are_reported_and_skipped(volumes, tmp_path, capsys):
    images, labels, truth = volumes
    (labels / "p0.nii.gz").unlink()  # no label volume
    save(labels / "p1.nii.gz", truth["p1"][1][:, :32], np.uint8)  # another grid
    bad = truth["p2"][1].copy()
    bad[0, 0, 0] = 9
    save(labels / "p2.nii.gz", bad, np.uint8)  # a value with no class
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    moved = truth["p3"][1].transpose(2, 1, 0)[::-1, ::-1, :]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(moved), shifted), str(labels / "p3.nii.gz"))  # same grid, 5 mm off
    before = sorted(p.stat().st_mtime_ns for p in labels.iterdir())
    out = tmp_path / "coco"
    assert convert(images, labels, out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("hemoseg: skipped: ") for line in err)
    assert "p0.nii.gz: no label volume named p0" in err[0]
    assert any("p1.nii.gz: label grid (8, 32, 64) differs from the image's (8, 64, 64)" in e for e in err)
    assert any("p2.nii.gz: label values [9] have no class" in e for e in err)
    assert any("p3.nii.gz: label volume is placed differently from the image" in e for e in err)
    names = {r.path.stem.rsplit("_z", 1)[0] for sp in load_dataset(out).splits.values() for r in sp.images}
    assert names == {"p4"}
    assert sorted(p.stat().st_mtime_ns for p in labels.iterdir()) == before  # inputs untouched


def test_a_label_file_in_another_axis_order_is_the_same_grid(volumes, tmp_path, capsys):
    """ITK tools store LPS, others RAS: the same voxels in another array layout must convert,
    with masks exact, while a real shift (test above) is still refused."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    images, labels, truth = volumes
    img = nib.load(labels / "p0.nii.gz")
    to_lps = ornt_transform(io_orientation(img.affine), axcodes2ornt(("L", "P", "S")))
    nib.save(img.as_reoriented(to_lps), str(labels / "p0.nii.gz"))
    assert nib.aff2axcodes(nib.load(labels / "p0.nii.gz").affine) == ("L", "P", "S")
    out = tmp_path / "coco"
    assert convert(images, labels, out) == 0
    ds = load_dataset(out)
    recs = [(r, sp) for sp in ds.splits.values() for r in sp.images if r.path.stem.startswith("p0_z")]
    assert recs
    for rec, sp in recs:
        z = int(rec.path.stem.rsplit("_z", 1)[1])
        np.testing.assert_array_equal(rasterize(rec, sp.classes, "multiclass"), truth["p0"][1][z])


def test_refusals_are_one_line_and_leave_nothing(volumes, tmp_path, capsys):
    images, labels, _ = volumes
    out = tmp_path / "coco"
    out.mkdir()
    assert convert(images, labels, out) == 2
    assert f"output folder {out} already exists; use --force" in capsys.readouterr().err
    for args, words in (
        (["--classes", "1:IPH"], "is not VALUE=NAME"),
        (["--windows", "brain,subdural"], "holds 1 or 3 windows"),
        (["--test", "1.5"], "--test must be a fraction"),
    ):
        rc = main(["data", "from-nifti", str(images), str(labels), "--out", str(tmp_path / "x"),
                   "--classes", CLASSES, *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and words in err[0], err
        assert not (tmp_path / "x").exists()
    for p in labels.iterdir():
        p.unlink()
    rc = main(["data", "from-nifti", str(images), str(labels), "--out", str(tmp_path / "y"), "--classes", CLASSES])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 6 and all("no label volume named" in e for e in err[:5])
    assert err[-1] == f"hemoseg: error: {images}: no volume could be converted (5 skipped); nothing written"
    assert not (tmp_path / "y").exists() and not list(tmp_path.glob(".y.tmp-*"))


def test_split_sizes():
    names = [f"v{i}" for i in range(10)]
    split = assign_splits(names, 0.1, 0.2, seed=3)
    assert sorted(split.values()).count("test") == 2 and list(split.values()).count("valid") == 1
    assert assign_splits(names, 0.1, 0.2, seed=3) == split
    assert set(assign_splits(["only"], 0.1, 0.1, 0).values()) == {"train"}  # train is never emptied
