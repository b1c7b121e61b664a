"""`hemoseg predict` end to end with a fake predictor: every output file,
DICOM SEG read-back, batch behaviour, and each bad input's message and exit
status through the real CLI entry point."""

from __future__ import annotations

import csv
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from predict_fixtures import FakePredictor, ct_volume, enhanced_ct, write_ct_series, write_png

from hemoseg import RESEARCH_NOTICE
from hemoseg.inference import intracranial
from hemoseg.cli import predict_cmd
from hemoseg.cli.main import main

BLOB_ML = 360 * 2.5 * 0.5 * 0.5 / 1000  # ct_volume's blob at the default fixture spacing


@pytest.fixture
def fake(monkeypatch):
    fp = FakePredictor()
    monkeypatch.setattr(predict_cmd, "load_predictor", lambda run, backend: fp)
    return fp


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    return d


def predict(capsys, run_dir, *args):
    rc = main(["predict", str(run_dir), *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def _digest(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _visible(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_dicom_series_end_to_end(tmp_path, capsys, fake, run_dir):
    import highdicom as hd

    vol = ct_volume()
    files = write_ct_series(tmp_path / "in" / "s1", vol)
    (tmp_path / "in" / "s1" / "notes.txt").write_text("exported by PACS")
    before = _digest(tmp_path / "in")
    out = tmp_path / "out"
    rc, stdout, err = predict(capsys, run_dir, tmp_path / "in", "--out", out)
    assert rc == 0, err
    assert _digest(tmp_path / "in") == before  # inputs untouched
    assert "s1: Intraparenchymal hemorrhage 0.23 mL" in stdout and RESEARCH_NOTICE in stdout
    d = out / "s1"
    assert _visible(out) == ["s1", "summary.csv", "summary.json"]
    assert _visible(d) == ["labels.nii.gz", "masks", "montage.png", "overlays", "report.csv",
                           "report.html", "report.json", "seg.dcm"]

    expected = ((vol >= 50) & (vol <= 90)).astype(np.uint8)
    masks = np.stack([np.asarray(Image.open(d / "masks" / f"slice_{z:04d}.png")) for z in range(6)])
    np.testing.assert_array_equal(masks, expected)
    assert len(list((d / "overlays").glob("slice_*.png"))) == 6

    rep = json.loads((d / "report.json").read_text())
    iph = rep["classes"][0]
    assert rep["notice"] == RESEARCH_NOTICE and rep["spacing_mm"] == [2.5, 0.5, 0.5]
    assert rep["postprocessing"] == [intracranial.NOTE]  # HU input: the report names the skull mask
    assert iph["voxels"] == 360 and iph["volume_ml"] == pytest.approx(BLOB_ML)
    assert iph["slices_involved"] == 3 and iph["max_area"] == pytest.approx(120 * 0.25)
    assert iph["abc2"]["c_mm"] == pytest.approx(7.5)
    assert rep["dicom_ids"]["StudyInstanceUID"] == "1.2.826.0.1.3680043.8.498.1"
    assert [s["source"] for s in rep["slices"]] == [p.name for p, _ in files]
    assert rep["slices"][2]["classes"] == ["Intraparenchymal hemorrhage"]
    assert any("notes.txt" in w for w in rep["warnings"])
    assert "PatientName" not in json.dumps(rep) and "Doe" not in json.dumps(rep)

    html = (d / "report.html").read_text()
    assert html.count(RESEARCH_NOTICE) == 2 and "data:image/png;base64," in html
    rows = list(csv.DictReader(open(d / "report.csv")))
    assert rows[0]["class"] == "Intraparenchymal hemorrhage" and float(rows[0]["volume_ml"]) == pytest.approx(BLOB_ML)

    # NIfTI on the DICOM geometry
    nii = nib.load(str(d / "labels.nii.gz"))
    np.testing.assert_array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0), expected)
    np.testing.assert_allclose(nii.affine[:3, :3], np.diag([-0.5, -0.5, 2.5]), atol=1e-6)

    # DICOM SEG: readable by highdicom, referencing exactly the source instances
    seg = hd.seg.segread(d / "seg.dcm")
    assert seg.SegmentationType == "BINARY" and seg.number_of_segments == 1
    desc = seg.SegmentSequence[0]
    assert desc.SegmentLabel == "Intraparenchymal hemorrhage" and desc.SegmentAlgorithmName == "hemoseg"
    assert desc.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "hemoseg"
    assert {u[2] for u in seg.get_source_image_uids()} == {sop for _, sop in files}
    ref = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
           for f in seg.PerFrameFunctionalGroupsSequence}
    assert ref == {files[k][1] for k in (1, 2, 3)}
    px = seg.get_pixels_by_source_instance([files[2][1]], segment_numbers=[1])
    np.testing.assert_array_equal(px[0, :, :, 0], expected[2])
    assert "RESEARCH USE ONLY" in seg.SeriesDescription

    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"studies": 1, "failed": 0}
    assert summary["studies"][0]["volumes_ml"] == {"Intraparenchymal hemorrhage": pytest.approx(BLOB_ML)}


def test_multiframe_dicom_seg_references_the_right_frames(tmp_path, capsys, fake, run_dir):
    import highdicom as hd

    vol = ct_volume()
    mf = enhanced_ct(write_ct_series(tmp_path / "series", vol), tmp_path / "in" / "ct.dcm")
    out = tmp_path / "out"
    rc, stdout, err = predict(capsys, run_dir, mf, "--out", out)
    assert rc == 0, err
    assert "ct: Intraparenchymal hemorrhage 0.23 mL" in stdout
    expected = ((vol >= 50) & (vol <= 90)).astype(np.uint8)
    masks = np.stack([np.asarray(Image.open(out / "ct" / "masks" / f"slice_{z:04d}.png")) for z in range(6)])
    np.testing.assert_array_equal(masks, expected)  # slice 0 is still the inferior one
    seg = hd.seg.segread(out / "ct" / "seg.dcm")
    source = hd.imread(mf)
    assert {u[2] for u in seg.get_source_image_uids()} == {source.SOPInstanceUID}
    # frames are stored superior-first: file frame f holds slice 5 - f (0-based)
    for f in seg.PerFrameFunctionalGroupsSequence:
        frame = int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        z = 6 - frame
        assert f.PlanePositionSequence[0].ImagePositionPatient == \
            source.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0].ImagePositionPatient
        px = seg.get_pixels_by_source_frame(source.SOPInstanceUID, [frame], segment_numbers=[1])
        np.testing.assert_array_equal(px[0, :, :, 0], expected[z])
    assert sorted(6 - int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                  for f in seg.PerFrameFunctionalGroupsSequence) == [1, 2, 3]


def test_nifti_output_keeps_input_geometry(tmp_path, capsys, fake, run_dir):
    vol = ct_volume(z=4)
    data = vol.transpose(2, 1, 0)[::-1, ::-1, :]  # stored RAS
    aff = np.array([[0.7, 0, 0, -20], [0, 0.7, 0, -22], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    src = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), aff), str(src))
    out = tmp_path / "out"
    rc, _, err = predict(capsys, run_dir, src, "--out", out)
    assert rc == 0, err
    nii = nib.load(str(out / "head" / "labels.nii.gz"))
    assert nii.shape == data.shape and nii.get_data_dtype() == np.uint8
    np.testing.assert_allclose(nii.affine, aff, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(nii.dataobj), ((data >= 50) & (data <= 90)))
    rep = json.loads((out / "head" / "report.json").read_text())
    assert rep["files"]["dicom_seg"] is None and rep["spacing_mm"] == pytest.approx([3.0, 0.7, 0.7])
    assert rep["classes"][0]["volume_ml"] == pytest.approx(360 * 3 * 0.49 / 1000, rel=1e-4)


def test_png_has_no_spacing_and_says_so(tmp_path, capsys, fake, run_dir):
    img = np.full((32, 32), 80, np.uint8)
    img[10:14, 10:15] = 230
    src = write_png(tmp_path / "slice7.png", img)
    out = tmp_path / "out"
    rc, stdout, err = predict(capsys, run_dir, src, "--out", out)
    assert rc == 0, err
    assert "(volume unavailable: no spacing)" in stdout
    d = out / "slice7"
    assert _visible(d) == ["masks", "montage.png", "overlays", "report.csv", "report.html", "report.json"]
    rep = json.loads((d / "report.json").read_text())
    c = rep["classes"][0]
    assert rep["spacing_mm"] is None and rep["spacing_note"] == "volume unavailable: no spacing"
    assert rep["postprocessing"] == []  # display values: no HU, no skull mask
    assert c["volume_ml"] is None and c["volume_note"] == "volume unavailable: no spacing"
    assert c["abc2"] is None and c["abc2_note"] == "volume unavailable: no spacing"
    assert c["max_area"] == 20 and c["max_area_unit"] == "px"
    assert "volume unavailable: no spacing" in (d / "report.html").read_text()
    row = next(csv.DictReader(open(d / "report.csv")))
    assert row["volume_ml"] == "" and row["volume_note"] == "volume unavailable: no spacing"


def test_batch_one_bad_study_is_skipped(tmp_path, capsys, fake, run_dir):
    root = tmp_path / "batch"
    write_ct_series(root / "good", ct_volume(z=3))
    bad = write_ct_series(root / "bad", ct_volume(z=3))
    bad[1][0].write_bytes(bad[1][0].read_bytes()[:-2000])
    out = tmp_path / "out"
    rc, stdout, err = predict(capsys, run_dir, root, tmp_path / "nope", "--out", out)
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("hemoseg: error:")]
    assert lines[0] == f"hemoseg: error: {tmp_path / 'nope'}: does not exist"
    assert lines[1].startswith(f"hemoseg: error: {bad[1][0]}: pixel data is truncated or corrupt")
    assert len(lines) == 2
    assert _visible(out) == ["good", "summary.csv", "summary.json"]  # no temp or partial folders
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"studies": 1, "failed": 2}
    assert {f["input"] for f in summary["failed"]} == {str(tmp_path / "nope"), str(root / "bad")}
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["status"] for r in rows] == ["ok", "failed", "failed"]


def test_each_series_splits_a_flat_pacs_export(tmp_path, capsys, fake, run_dir):
    """A whole study exported into one folder: an axial series with a bleed, a second
    reconstruction without, and a localizer. One clear line without --each-series; with
    it, one study per image series and the localizer left out, in each report."""
    import pydicom

    flat = tmp_path / "flat"
    flat.mkdir()
    blob, clean = ct_volume(), ct_volume(blob=False)
    for number, vol, image_type in ((2, blob, None), (3, clean, None), (1, clean[:1], "LOCALIZER")):
        for path, _ in write_ct_series(tmp_path / f"s{number}", vol):
            ds = pydicom.dcmread(path)
            ds.SeriesNumber = number
            if image_type:
                ds.ImageType = ["ORIGINAL", "PRIMARY", image_type]
            ds.save_as(flat / f"s{number}_{path.name}")
    rc, _, err = predict(capsys, run_dir, flat, "--out", tmp_path / "out")
    assert rc == 2 and "holds 2 DICOM series" in err and not _visible(tmp_path / "out")  # the scout is not one
    rc, out, err = predict(capsys, run_dir, flat, "--out", tmp_path / "out", "--each-series")
    assert rc == 0 and _visible(tmp_path / "out") == ["flat_S2", "flat_S3", "summary.csv", "summary.json"]
    reports = {n: json.loads((tmp_path / "out" / n / "report.json").read_text()) for n in ("flat_S2", "flat_S3")}
    iph = {n: next(c for c in r["classes"] if c["class"] == "Intraparenchymal hemorrhage") for n, r in reports.items()}
    assert iph["flat_S2"]["volume_ml"] == pytest.approx(BLOB_ML) and iph["flat_S3"]["volume_ml"] == 0
    for r in reports.values():
        assert r["n_source_files"] == 6
        assert f"{flat} holds 2 image series, each read as its own study; left out series 1 (1 localizer image(s))" \
            in r["warnings"]


def test_existing_output_needs_force(tmp_path, capsys, fake, run_dir):
    src = write_png(tmp_path / "a.png", np.zeros((8, 8)))
    out = tmp_path / "out"
    assert predict(capsys, run_dir, src, "--out", out)[0] == 0
    (out / "a" / "marker").write_text("old")
    rc, _, err = predict(capsys, run_dir, src, "--out", out)
    assert rc == 2
    assert (f"hemoseg: error: {src}: output folder {out / 'a'} already exists; "
            "use --force to replace it") in err
    assert (out / "a" / "marker").exists()
    rc, _, err = predict(capsys, run_dir, src, "--out", out, "--force")
    assert rc == 0 and not (out / "a" / "marker").exists() and (out / "a" / "report.json").exists()
    # a later run into the same folder adds to the summary
    src2 = write_png(tmp_path / "b.png", np.zeros((8, 8)))
    assert predict(capsys, run_dir, src2, "--out", out)[0] == 0
    assert [s["study"] for s in json.loads((out / "summary.json").read_text())["studies"]] == ["a", "b"]


def _junk_in_dicom_folder(tmp_path):
    files = write_ct_series(tmp_path / "ser", ct_volume(z=2))
    (tmp_path / "ser" / "junk.dcm").write_text("not dicom at all, just text padding " * 10)
    return tmp_path / "ser", f"{tmp_path / 'ser' / 'junk.dcm'}: is not a DICOM file (no DICOM header)"


def _no_pixels(tmp_path):
    import pydicom

    files = write_ct_series(tmp_path / "ser", ct_volume(z=1))
    ds = pydicom.dcmread(files[0][0])
    del ds.PixelData
    ds.save_as(files[0][0])
    return files[0][0], (f"{files[0][0]}: DICOM file has no pixel data (SOP class CT Image Storage; "
                         "the file may be truncated); hemoseg needs CT image slices")


def _bad_syntax(tmp_path):
    import pydicom
    from pydicom.encaps import encapsulate

    files = write_ct_series(tmp_path / "ser", ct_volume(z=2))
    ds = pydicom.dcmread(files[0][0])
    ds.file_meta.TransferSyntaxUID = "1.2.840.99999.1"
    ds.PixelData = encapsulate([b"\x00\x01"])
    ds["PixelData"].VR = "OB"
    ds.save_as(files[0][0], enforce_file_format=True)
    return tmp_path / "ser", (f"{files[0][0]}: unsupported transfer syntax 1.2.840.99999.1; "
                              "decompress the series first (e.g. 'gdcmconv --raw' or 'dcmdjpeg')")


def _mixed(tmp_path):
    write_ct_series(tmp_path / "ser", ct_volume(z=2), series_uid="1.2.9.1")
    write_ct_series(tmp_path / "other", ct_volume(z=1), series_uid="1.2.9.2", shuffle=False)
    (tmp_path / "other" / "IM000.dcm").rename(tmp_path / "ser" / "other.dcm")
    return tmp_path / "ser", (f"{tmp_path / 'ser'}: holds 2 DICOM series (1.2.9.1 (2 files), "
                              "1.2.9.2 (1 files)); hemoseg reads one series per folder: move each "
                              "series into its own subfolder and give the parent folder")


def _nifti_4d(tmp_path):
    p = tmp_path / "dyn.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2, 3), np.int16), np.eye(4)), str(p))
    return p, (f"{p}: is a 4-D NIfTI (shape 4x4x2x3); hemoseg needs one 3-D volume: "
               "split it first (e.g. fslsplit)")


def _truncated_png(tmp_path):
    p = write_png(tmp_path / "cut.png", np.random.default_rng(1).integers(0, 255, (64, 64)))
    p.write_bytes(p.read_bytes()[:300])
    return p, f"{p}: image is truncated or corrupt"


def _truncated_dicom(tmp_path):
    files = write_ct_series(tmp_path / "ser", ct_volume(z=2))
    p = files[0][0]
    p.write_bytes(p.read_bytes()[:5000])
    return tmp_path / "ser", f"{p}: pixel data is truncated or corrupt (ValueError: The number of bytes"


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", f"{tmp_path / 'empty'}: folder is empty (no files found, searched recursively)"


def _missing(tmp_path):
    return tmp_path / "no_such_study", f"{tmp_path / 'no_such_study'}: does not exist"


@pytest.mark.parametrize("make", [_junk_in_dicom_folder, _no_pixels, _bad_syntax, _mixed, _nifti_4d,
                                  _truncated_png, _truncated_dicom, _empty, _missing],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_input_one_clear_line(tmp_path, capsys, fake, run_dir, make):
    src, message = make(tmp_path)
    before = _digest(tmp_path)
    out = tmp_path / "out"
    rc, stdout, err = predict(capsys, run_dir, src, "--out", out)
    assert rc == 2
    errors = [ln for ln in err.splitlines() if ln.startswith("hemoseg: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"hemoseg: error: {message}"), err
    assert "hemoseg: nothing written" in err
    assert _visible(out) == []  # nothing half-written
    assert _digest(tmp_path) == before  # input files never modified


def test_nothing_usable_never_loads_the_model(tmp_path, capsys, monkeypatch, run_dir):
    def boom(run, backend):
        raise AssertionError("model loaded for nothing")

    monkeypatch.setattr(predict_cmd, "load_predictor", boom)
    rc, _, err = predict(capsys, run_dir, tmp_path / "missing", "--out", tmp_path / "out")
    assert rc == 2 and "does not exist" in err


def test_missing_run_folder(tmp_path, capsys, fake):
    rc, _, err = predict(capsys, tmp_path / "norun", tmp_path, "--out", tmp_path / "out")
    assert rc == 2 and err.strip() == f"hemoseg: error: {tmp_path / 'norun'}: run folder does not exist"


def test_broken_predictor_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, run_dir):
    class Broken(FakePredictor):
        def predict_volume(self, study, tta=False, progress=None):
            return np.zeros((1, 2, 2), np.uint8)

    monkeypatch.setattr(predict_cmd, "load_predictor", lambda run, backend: Broken())
    src = write_png(tmp_path / "a.png", np.zeros((8, 8)))
    rc, _, err = predict(capsys, run_dir, src, "--out", tmp_path / "out")
    assert rc == 2
    assert (f"hemoseg: error: {src}: internal error: RuntimeError: predictor returned shape "
            "(1, 2, 2), expected (1, 8, 8)") in err
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "summary.json"]


def test_cli_uses_predictor_from_run(tmp_path, capsys, monkeypatch, run_dir):
    """Without the test seam, the CLI goes through Predictor.from_run."""
    mod = pytest.importorskip("hemoseg.inference.predictor")
    seen = {}

    def from_run(cls, run, backend="auto"):
        seen.update(run=str(run), backend=backend)
        return FakePredictor()

    monkeypatch.setattr(mod.Predictor, "from_run", classmethod(from_run))
    src = write_png(tmp_path / "a.png", np.zeros((8, 8)))
    rc, _, err = predict(capsys, run_dir, src, "--out", tmp_path / "out", "--backend", "onnx", "--tta")
    assert rc == 0, err
    assert seen == {"run": str(run_dir), "backend": "onnx"}
    rep = json.loads((tmp_path / "out" / "a" / "report.json").read_text())
    assert rep["model"]["tta"] is True and rep["model"]["run"] == str(run_dir)


def test_warm_up_runs_the_network_once_on_a_blank_batch_and_never_raises():
    from types import SimpleNamespace

    from hemoseg.data.preprocessing import Preprocessing
    from hemoseg.inference.pipeline import warm_up

    seen = []

    class Probe:
        preprocessing = Preprocessing(size=32, windows=[(40, 80), (80, 200)], mean=(0.2, 0.3), std=(0.3, 0.3))
        batch_size = 3

        def probabilities(self, display, tta=False):
            seen.append((display.shape, display.dtype, int(display.max()), tta))
            raise RuntimeError("a failing network must not take the caller down")

    warm_up(Probe())
    assert seen == [((3, 32, 32, 2), np.dtype(np.uint8), 0, False)]
    warm_up(SimpleNamespace(predict_volume=lambda *a, **k: None))  # no probabilities(): libraries only
    warm_up()


def test_predict_process_leaves_early_with_every_output_written(tmp_path):
    """`hemoseg predict` skips interpreter teardown (cli.main.entry): its files, its
    stdout and its exit status must all be complete anyway."""
    import os
    import subprocess
    import sys

    from hemoseg.server.testing import make_tiny_run

    run = make_tiny_run(tmp_path / "run")
    write_ct_series(tmp_path / "in" / "s1", ct_volume())
    write_png(tmp_path / "in" / "broken.png", np.zeros((8, 8)))
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe is block-buffered
    p = subprocess.run([sys.executable, "-m", "hemoseg", "predict", str(run), str(tmp_path / "in"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 1, p.stderr  # one study written, one input failed
    assert p.stdout.rstrip().endswith(f"hemoseg: 1 study(ies) written to {out}, 1 failed. {RESEARCH_NOTICE}")
    assert "broken.png" in p.stderr and "Traceback" not in p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"studies": 1, "failed": 1}
    rep = json.loads((out / "s1" / "report.json").read_text())
    assert len(rep["slices"]) == 6
    if rep["files"]["dicom_seg"]:
        assert (out / "s1" / "seg.dcm").stat().st_size > 0
    assert nib.load(str(out / "s1" / "labels.nii.gz")).shape[2] == 6


def test_uneven_slices_weigh_by_their_own_extent(tmp_path, capsys, fake, run_dir):
    """A series with one slice missing (positions 0, 2.5, 5, 10, 12.5, 15 mm): each slice
    stands for the head halfway to its neighbours, so the two beside the gap count 3.75 mm
    each. The median spacing (2.5 mm) would lose a third of the blob on slices 1-3."""
    positions = [np.array([-16.0, -16.0, z]) for z in (0.0, 2.5, 5.0, 10.0, 12.5, 15.0)]
    write_ct_series(tmp_path / "gap", ct_volume(), positions=positions)
    rc, _, err = predict(capsys, run_dir, tmp_path / "gap", "--out", tmp_path / "out")
    assert rc == 0, err
    rep = json.loads((tmp_path / "out" / "gap" / "report.json").read_text())
    iph = rep["classes"][0]
    area_mm2 = 120 * 0.5 * 0.5  # the blob's cross-section on each of slices 1, 2 and 3
    assert iph["volume_ml"] == pytest.approx(area_mm2 * (2.5 + 3.75 + 3.75) / 1000)
    assert rep["total"]["volume_ml"] == pytest.approx(iph["volume_ml"])  # the only class found
    assert iph["abc2"]["c_mm"] == pytest.approx(10.0)
    assert any(w.startswith("uneven slice spacing (2.5 to 5 mm") and "halfway to its neighbours" in w
               for w in rep["warnings"])
