"""The synthetic head-CT generator: reproducibility, COCO/DICOM correctness,
and that the images look like CT in the numbers that matter (HU ranges)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pycocotools import mask as mask_utils

from hemoseg.cli.main import main
from hemoseg.data.synth import (CLASS_NAMES, EDEMA, IPH, SAH, generate, make_split, mask_to_polygons,
                                render_plane, render_study, sample_head, scanner_effects)
from hemoseg.errors import HemosegError

SMALL = dict(train=24, valid=8, test=8, size=128, studies=1, slices=8, dicom_size=128)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "out"
    generate(out, seed=0, **SMALL)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _decode(seg, h, w) -> np.ndarray:
    rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if isinstance(seg, list) else seg
    return mask_utils.decode(rle).astype(bool)


def _series(dicom_dir: Path):
    dss = [pydicom.dcmread(p) for p in sorted(dicom_dir.glob("*.dcm"))]
    return sorted(dss, key=lambda d: float(d.ImagePositionPatient[2]))


# --- reproducibility -------------------------------------------------------

def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    again = tmp_path / "again"
    generate(again, seed=0, **SMALL)
    a, b = _files(dataset), _files(again)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert any(k.endswith(".jpg") for k in a) and any(k.endswith(".dcm") for k in a)
    assert any(k.endswith(".nii.gz") for k in a)

    other = tmp_path / "other"
    generate(other, seed=1, **SMALL)
    c = _files(other)
    js = "coco/train/_annotations.coco.json"
    assert c[js] != a[js]
    assert sorted(k for k in c if k.endswith(".jpg")) != sorted(k for k in a if k.endswith(".jpg"))
    dcm_a = [v for k, v in sorted(a.items()) if k.endswith(".dcm")]
    dcm_c = [v for k, v in sorted(c.items()) if k.endswith(".dcm")]
    assert dcm_a[0] != dcm_c[0]


# --- COCO export -----------------------------------------------------------

def test_coco_layout_and_structure(dataset):
    for split, n in (("train", 24), ("valid", 8), ("test", 8)):
        d = dataset / "coco" / split
        coco = json.loads((d / "_annotations.coco.json").read_text())
        assert coco["categories"][0] == {"id": 0, "name": "lesions", "supercategory": "none"}
        assert coco["categories"][1:] == [
            {"id": k, "name": name, "supercategory": "lesions"} for k, name in CLASS_NAMES.items()]
        assert [c["name"] for c in coco["categories"][1:]] == [
            "Epidural hemorrhage", "Intraparenchymal hemorrhage", "Intraventricular hemorrhage",
            "Subarachnoid hemorrhage", "Subdural hemorrhage", "Perihematomal edema"]
        assert len(coco["images"]) == n
        assert sorted(p.name for p in d.glob("*.jpg")) == sorted(i["file_name"] for i in coco["images"])
        ids = {i["id"] for i in coco["images"]}
        for img in coco["images"]:
            assert img["width"] == img["height"] == 128
        jpg = cv2.imread(str(d / coco["images"][0]["file_name"]), cv2.IMREAD_UNCHANGED)
        assert jpg.shape == (128, 128) and jpg.dtype == np.uint8
        for a in coco["annotations"]:
            assert set(a) >= {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
            assert a["iscrowd"] == 0 and a["image_id"] in ids and 1 <= a["category_id"] <= 6
            if a["category_id"] == EDEMA:
                assert isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)
            else:
                assert isinstance(a["segmentation"], list)
                assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
            m = _decode(a["segmentation"], 128, 128)
            assert a["area"] == int(m.sum())
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(m)
            assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_exported_masks_reproduce_generator_labels(dataset):
    """Re-rasterised polygons/RLE must match the label slices the generator
    made (the generator is deterministic, so regenerate them in memory)."""
    samples = make_split(0, "train", 24, 128)
    coco = json.loads((dataset / "coco/train/_annotations.coco.json").read_text())
    by_name = {s.file_name: s for s in samples}
    ious: dict[int, list[float]] = {k: [] for k in CLASS_NAMES}
    seen = set()
    for img in coco["images"]:
        label = by_name[img["file_name"]].label
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert {a["category_id"] for a in anns} == set(np.unique(label)) - {0}
        for a in anns:
            got, want = _decode(a["segmentation"], 128, 128), label == a["category_id"]
            ious[a["category_id"]].append((got & want).sum() / (got | want).sum())
            seen.add(a["category_id"])
    assert seen == set(CLASS_NAMES), "every class appears in train"
    for k, v in ious.items():
        assert min(v) > 0.9, (CLASS_NAMES[k], min(v))


def test_polygons_keep_holes_and_thin_parts():
    m = np.zeros((40, 40), dtype=bool)
    m[3:6, 2:30] = True  # 3 px strip
    m[10:30, 8:30] = True
    m[15:24, 13:22] = False  # hole
    m[20:22, 17:19] = True  # island inside the hole
    m[35, 35] = True  # single pixel
    got = _decode(mask_to_polygons(m), 40, 40)
    assert np.array_equal(got, m)


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_each_class_in_each_default_split_with_negatives(split):
    n = {"train": 300, "valid": 50, "test": 50}[split]
    if split == "train":
        n = 60  # the class cycle is the same; keep the test fast
    samples = make_split(0, split, n, 48)
    present = [set(np.unique(s.label)) - {0} for s in samples]
    for k in CLASS_NAMES:
        assert sum(k in p for p in present) >= 3, CLASS_NAMES[k]
    empty = sum(not p for p in present) / len(samples)
    assert 0.15 <= empty <= 0.32
    # patient-disjoint: head names are per split
    assert all(s.head.startswith(f"synth-{split}-") for s in samples)


def test_hu_ranges_look_like_ct():
    rng = np.random.default_rng(5)
    head = sample_head(rng, [IPH, 1, 3, 4, 5], big_lesions=True)
    zs = np.linspace(head.center[2] - 20, head.center[2] + 50, 15)
    hus, labs = [], []
    for z in zs:
        hu, lab = render_plane(head, float(z), (192, 192), 1.2)
        hus.append(scanner_effects(hu, rng, 1.2, head.noise_std, head.blur_mm))
        labs.append(lab)
    hu, lab = np.stack(hus), np.stack(labs)
    assert np.median(hu[hu > 300]) > 700  # skull
    assert hu.min() < -900  # air
    for k in (1, 2, 3, 4, 5):
        assert (lab == k).sum() > 20, CLASS_NAMES[k]
        assert 50 <= np.median(hu[lab == k]) <= 90, CLASS_NAMES[k]
    assert 12 <= np.median(hu[lab == EDEMA]) <= 28

    normal = sample_head(np.random.default_rng(6))
    clean, lab = render_plane(normal, float(normal.center[2] + 40), (320, 320), 0.75)
    assert not lab.any()
    noisy = scanner_effects(clean, rng, 0.75, normal.noise_std, normal.blur_mm)
    yy, xx = np.mgrid[:320, :320] * 0.75 - 119.625
    core = (xx - normal.center[0]) ** 2 + (yy - normal.center[1]) ** 2 < 30 ** 2
    assert 20 <= np.median(noisy[core]) <= 45  # parenchyma
    assert 3 <= np.std(noisy[core] - clean[core]) <= 7  # scanner-like noise
    brain = (clean > -20) & (clean < 100)
    frac = lambda lo, hi: ((clean[brain] >= lo) & (clean[brain] <= hi)).mean()  # noqa: E731
    assert frac(24, 31) > 0.3 and frac(36, 42) > 0.1 and frac(0, 10) > 0.02  # white, grey, CSF


def test_sah_is_at_least_three_pixels_wide_at_256():
    rng = np.random.default_rng(11)
    head = sample_head(rng, [SAH])
    p1 = head.lesions[0].params["p1"]
    z = float(head.to_scanner(p1 * 0.9)[2])
    _, lab = render_plane(head, z, (256, 256), 235 / 256)
    sah = (lab == SAH).astype(np.uint8)
    assert sah.sum() > 50
    kept = cv2.erode(sah, np.ones((3, 3), np.uint8)).sum() / sah.sum()
    assert kept > 0.2  # a 1-2 px wide structure would vanish under a 3x3 erosion


# --- DICOM export ----------------------------------------------------------

def test_dicom_series_geometry_and_ground_truth(dataset):
    dicom = dataset / "dicom"
    gt = json.loads((dicom / "ground_truth.json").read_text())
    assert list(gt) == ["synth_001"]
    info = gt["synth_001"]
    assert info["axis_order"] == "zyx"
    dz, ps_r, ps_c = info["spacing_mm"]
    files = sorted((dicom / "synth_001").glob("*.dcm"))
    assert len(files) == 8
    dss = _series(dicom / "synth_001")
    by_name = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert by_name != sorted(by_name), "file names must not give the slice order"
    zs = [float(d.ImagePositionPatient[2]) for d in dss]
    assert np.allclose(np.diff(zs), dz)
    assert 0.4 * 512 / 128 <= ps_r <= 0.5 * 512 / 128 + 0.01 and ps_r == ps_c
    assert 4.0 <= dz <= 5.0
    uids = set()
    for k, d in enumerate(dss):
        assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert d.SOPClassUID == pydicom.uid.CTImageStorage and d.Modality == "CT"
        assert float(d.RescaleIntercept) == -1024 and float(d.RescaleSlope) == 1
        assert [float(v) for v in d.PixelSpacing] == [ps_r, ps_c]
        assert float(d.SliceThickness) == dz
        assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert int(d.InstanceNumber) == k + 1
        assert d.PatientName == "SYNTH^001" and d.StudyInstanceUID == info["study_instance_uid"]
        assert d.SeriesInstanceUID == info["series_instance_uid"]
        uids.add(d.SOPInstanceUID)
        for kw in ("PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "AccessionNumber", "StudyID", "Manufacturer", "SeriesNumber", "FrameOfReferenceUID"):
            assert kw in d, kw
    assert len(uids) == 8 and len({d.FrameOfReferenceUID for d in dss}) == 1

    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    img = nib.load(dicom / info["labels"])
    lab = np.asarray(img.dataobj)
    assert lab.shape == hu.shape == tuple(info["shape"])
    # the NIfTI affine puts voxel (0, 0, 0) where the first slice's pixel (0, 0) is (LPS -> RAS)
    x0, y0, z0 = (float(v) for v in dss[0].ImagePositionPatient)
    assert np.allclose(img.affine @ [0, 0, 0, 1], [-x0, -y0, z0, 1])
    assert np.allclose(img.affine @ [1, 2, 3, 1], [-(x0 + 3 * ps_c), -(y0 + 2 * ps_r), z0 + dz, 1])
    voxel = dz * ps_r * ps_c
    for k, name in CLASS_NAMES.items():
        assert info["voxels"][name] == int((lab == k).sum())
        assert info["volumes_ml"][name] == pytest.approx((lab == k).sum() * voxel / 1000, rel=1e-12)
    assert 50 <= np.median(hu[lab == IPH]) <= 90
    assert np.median(hu[hu > 300]) > 700


def test_default_studies_have_several_lesions_over_1ml():
    for i in range(3):
        st = render_study(0, i, slices=32, size=96)
        vox = st.spacing[0] * st.spacing[1] * st.spacing[2] / 1000
        vols = {k: (st.label == k).sum() * vox for k in CLASS_NAMES}
        assert sum(v > 1.0 for v in vols.values()) >= 3, vols
        assert 4 <= vols[IPH] <= 45 and vols[EDEMA] > 1
        assert set(np.unique(st.label)) <= set(range(7))


def test_highdicom_can_build_a_seg(dataset):
    hd = pytest.importorskip("highdicom")
    from pydicom.sr.codedict import codes

    dss = _series(dataset / "dicom" / "synth_001")
    lab = np.asarray(nib.load(dataset / "dicom" / "synth_001_labels.nii.gz").dataobj)
    mask = (lab > 0).astype(np.uint8)
    assert mask.any()
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="hemorrhage",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Hemorrhage,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=dss, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="0", device_serial_number="0")
    assert seg.StudyInstanceUID == dss[0].StudyInstanceUID and seg.PatientID == dss[0].PatientID


# --- CLI -------------------------------------------------------------------

def test_cli_writes_refuses_non_empty_and_forces(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["synth", str(out), "--train", "4", "--valid", "4", "--test", "4", "--size", "64",
            "--studies", "1", "--slices", "3", "--dicom-size", "64", "--seed", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "coco/train" in printed and "synth_001" in printed
    assert (out / "coco/valid/_annotations.coco.json").is_file()
    assert (out / "dicom/ground_truth.json").is_file()

    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and len(err.strip().splitlines()) == 1

    (out / "coco/train/stale.jpg").write_bytes(b"x")
    assert main(args + ["--force"]) == 0
    assert not (out / "coco/train/stale.jpg").exists()


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(HemosegError):
        generate(tmp_path / "a", train=-1)
    with pytest.raises(HemosegError):
        generate(tmp_path / "b", size=8)
    (tmp_path / "file").write_text("x")
    with pytest.raises(HemosegError):
        generate(tmp_path / "file")


def test_parallel_rendering_gives_the_same_slices(monkeypatch):
    """Heads are rendered in worker processes for large splits; each draws from its own
    seeded stream, so the slices must not depend on how many processes made them."""
    from hemoseg.data.synth import coco_export

    n = coco_export.SLICES_PER_HEAD * coco_export.PARALLEL_FROM_HEADS
    monkeypatch.setattr(coco_export, "cpu_threads", lambda: 2)
    parallel = make_split(3, "valid", n, 32)
    monkeypatch.setattr(coco_export, "PARALLEL_FROM_HEADS", 10**9)
    serial = make_split(3, "valid", n, 32)
    assert [s.file_name for s in parallel] == [s.file_name for s in serial]
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
               for a, b in zip(parallel, serial))
