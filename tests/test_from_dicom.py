"""`hemoseg data from-dicom`: DICOM series + the DICOM SEG a reader drew on each -> a COCO
export that trains (the same conversion as from-nifti, another source)."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image
from predict_fixtures import ct_volume, write_ct_series

from hemoseg.cli.main import main
from hemoseg.data.coco import load_dataset
from hemoseg.data.rasterize import rasterize
from hemoseg.inference.outputs import write_dicom_seg
from hemoseg.inference.readers import read_dicom_series

IPH, SDH = "Intraparenchymal hemorrhage", "Subdural hemorrhage"


def test_series_with_segs_become_an_export_with_exact_masks(tmp_path, capsys):
    series, segs = tmp_path / "series", tmp_path / "segs"
    segs.mkdir()
    truth = {}
    for i in range(4):
        vol = ct_volume(z=6)
        vol[:, 0, 1] = 500 + i  # tell the series apart
        files = write_ct_series(series / f"p{i}", vol, seed=i)
        study = read_dicom_series([p for p, _ in files])
        lab = np.zeros(vol.shape, np.uint8)
        lab[vol == 70] = 1                       # the blob: segment 1
        lab[2, 10:14, 40:50] = 2                 # a second segment on one slice
        # the reader named the segments in another order than the category ids
        write_dicom_seg(lab, study, [SDH, IPH] if i % 2 else [IPH, SDH], segs / f"p{i}.dcm")
        expect = lab.copy()
        if i % 2:  # segment 1 was labelled SDH and segment 2 IPH
            expect[lab == 1], expect[lab == 2] = 2, 1
        truth[f"p{i}"] = (vol, expect)
    write_ct_series(series / "p4", ct_volume(z=6), seed=9)
    shutil.copy(segs / "p0.dcm", segs / "p4.dcm")       # drawn on another series
    write_ct_series(series / "p5", ct_volume(z=6), seed=10)  # no SEG at all
    before = sorted((p.name, p.stat().st_mtime_ns) for p in segs.iterdir())

    out = tmp_path / "coco"
    rc = main(["data", "from-dicom", str(series), str(segs), "--out", str(out), "--classes", f"1={IPH},2={SDH}",
               "--valid", "0.25", "--test", "0.25", "--negatives", "0"])
    captured = capsys.readouterr()
    assert rc == 1
    err = captured.err.strip().splitlines()
    assert err == [f"hemoseg: skipped: {series / 'p5'}: no DICOM SEG named p5.dcm in {segs}",
                   f"hemoseg: skipped: {segs / 'p4.dcm'}: segments another series than the CT it is paired with"]
    assert main(["data", "check", str(out)]) == 0
    ds = load_dataset(out)
    seen = {}
    for split, sp in ds.splits.items():
        assert list(sp.classes.names) == [IPH, SDH]
        for rec in sp.images:
            name, z = rec.path.stem.rsplit("_z", 1)
            seen.setdefault(name, set()).add(split)
            vol, lab = truth[name]
            np.testing.assert_array_equal(rasterize(rec, sp.classes, "multiclass"), lab[int(z)])
            np.testing.assert_array_equal(np.asarray(Image.open(rec.path)),
                                          np.clip(np.rint(vol[int(z)] * 255 / 80), 0, 255))
    assert set(seen) == set(truth) and all(len(s) == 1 for s in seen.values())
    assert sum(len(sp.images) for sp in ds.splits.values()) == 4 * 3  # slices 1-3 carry segments
    assert sorted((p.name, p.stat().st_mtime_ns) for p in segs.iterdir()) == before  # inputs only read


def test_a_segment_with_no_class_is_named(tmp_path, capsys):
    series, segs = tmp_path / "series", tmp_path / "segs"
    segs.mkdir()
    vol = ct_volume(z=4)
    study = read_dicom_series([p for p, _ in write_ct_series(series / "p0", vol)])
    write_dicom_seg((vol == 70).astype(np.uint8), study, ["Contusion"], segs / "p0.dcm")
    rc = main(["data", "from-dicom", str(series), str(segs), "--out", str(tmp_path / "coco"), "--classes", f"1={IPH}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not (tmp_path / "coco").exists()
    assert err[0] == f"hemoseg: skipped: {segs / 'p0.dcm'}: segments ['Contusion'] have no class (--classes names {IPH})"
