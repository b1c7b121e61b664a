"""JSON API of `hemoseg serve`: upload -> poll -> report, data and downloads.

Most tests use hemoseg.server.testing.FakePredictor, which returns the
synthetic study's ground-truth labels, so the report's volumes can be checked
against ground_truth.json end to end. One test runs the real Predictor on a
freshly initialised tiny model to cover that path too."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from hemoseg import RESEARCH_NOTICE  # noqa: E402
from hemoseg.data.figures import class_colors  # noqa: E402
from hemoseg.server.app import create_app  # noqa: E402
from hemoseg.server.limits import ServerSettings  # noqa: E402
from hemoseg.server.testing import (FakePredictor, flat_export_with_second_series, make_tiny_run,  # noqa: E402
                                    synthetic_dicom_folder, synthetic_truth, zip_folder)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    folder = synthetic_dicom_folder(out, slices=8, size=64)
    truth = json.loads((folder.parent / "ground_truth.json").read_text())[folder.name]
    return {"folder": folder, "zip": zip_folder(folder, "EXPORT/"), "labels": synthetic_truth(folder),
            "truth": truth}


@pytest.fixture(scope="module")
def client(synth, tmp_path_factory):
    pred = FakePredictor(truths=[synth["labels"]])
    app = create_app(pred, ServerSettings(max_upload_bytes=8 << 20, max_queue=8),
                     work_dir=tmp_path_factory.mktemp("work"))
    with TestClient(app) as c:
        c.app_state = app.state
        yield c


def wait_done(client, job_id: str, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = client.get(f"/api/jobs/{job_id}").json()
        if st["status"] not in ("queued", "running"):
            return st
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {st}")


def submit(client, files, expect=202):
    r = client.post("/api/jobs", files=files)
    assert r.status_code == expect, r.text
    return r.json()


def test_health_info_and_openapi(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["capacity"] == 9
    info = client.get("/api/info").json()
    assert info["notice"] == RESEARCH_NOTICE
    expected = ["#%02x%02x%02x" % tuple(c) for c in class_colors(len(info["classes"]))]
    assert [c["color"] for c in info["classes"]] == expected  # one palette everywhere
    assert [c["label"] for c in info["classes"]] == list(range(1, len(info["classes"]) + 1))
    assert {p["name"]: (p["level"], p["width"]) for p in info["window_presets"]} == {
        "brain": (40, 80), "subdural": (75, 215), "bone": (600, 2800)}
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ["/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/report",
              "/api/jobs/{job_id}/volume", "/api/jobs/{job_id}/slices/{z}/{what}",
              "/api/jobs/{job_id}/files/{name}", "/health"]:
        assert p in paths, p
    post = paths["/api/jobs"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert {"413", "415", "422", "429"} <= set(post["responses"])
    assert "delete" in paths["/api/jobs/{job_id}"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="file-input"' in page.text
    assert "Research use only" in page.text


def test_dicom_zip_roundtrip(client, synth):
    job = submit(client, [("files", ("study.zip", synth["zip"], "application/zip"))])
    assert job["status"] in ("queued", "running") and job["input"]["kind"] == "zip"
    st = wait_done(client, job["id"])
    assert st["status"] == "done", st
    assert st["slices_done"] == st["slices_total"] == 8 and st["progress"] == 1.0

    rep = client.get(f"/api/jobs/{job['id']}/report").json()
    assert rep["notice"] == RESEARCH_NOTICE
    names = [c["class"] for c in rep["classes"]]
    assert names == list(synth["truth"]["volumes_ml"])
    for c in rep["classes"]:  # exact ground truth went through readers + volumes
        assert c["volume_ml"] == pytest.approx(synth["truth"]["volumes_ml"][c["class"]], abs=1e-3)
    # no folder or patient name from the upload in the result
    assert "EXPORT" not in json.dumps(rep) and "SYNTH^" not in rep["study"]

    vol = client.get(f"/api/jobs/{job['id']}/volume").json()
    assert vol["shape_zhw"] == [8, 64, 64] and vol["value_space"] == "hounsfield"
    assert vol["default_window"]["level"] == 40
    z = int(np.argmax((synth["labels"] > 0).sum(axis=(1, 2))))
    img = client.get(vol["slice_image_url"].format(z=z))
    assert img.headers["content-type"] == "application/octet-stream"
    hu = np.frombuffer(img.content, "<i2").reshape(64, 64)
    assert hu.min() <= -900 and 20 < np.median(hu[24:40, 24:40]) < 100  # air and brain, in HU
    lab = np.frombuffer(client.get(vol["slice_labels_url"].format(z=z)).content, np.uint8)
    np.testing.assert_array_equal(lab.reshape(64, 64), synth["labels"][z])
    whole = client.get(vol["volume_labels_url"])
    assert whole.headers["x-shape"] == "8,64,64"
    np.testing.assert_array_equal(np.frombuffer(whole.content, np.uint8).reshape(8, 64, 64),
                                  synth["labels"])
    assert client.get(vol["slice_image_url"].format(z=8)).status_code == 404

    expected = {"labels.nii.gz": "application/gzip", "seg.dcm": "application/dicom",
                "report.json": "application/json", "report.csv": "text/csv",
                "report.html": "text/html", "montage.png": "image/png"}
    for name, ctype in expected.items():
        r = client.get(f"/api/jobs/{job['id']}/files/{name}")
        assert r.status_code == 200, (name, r.text)
        assert r.headers["content-type"].startswith(ctype), name
        assert st["links"][name].endswith(name)
    files = {n: client.get(f"/api/jobs/{job['id']}/files/{n}").content for n in expected}
    assert files["labels.nii.gz"][:2] == b"\x1f\x8b"
    assert gzip.decompress(files["labels.nii.gz"])[:4] == (348).to_bytes(4, "little")
    assert files["seg.dcm"][128:132] == b"DICM"
    assert json.loads(files["report.json"])["classes"][0]["class"] == names[0]
    assert files["report.csv"].decode().startswith("study,class")
    assert RESEARCH_NOTICE in files["report.html"].decode()
    assert "attachment" in client.get(f"/api/jobs/{job['id']}/files/seg.dcm").headers["content-disposition"]

    # only results are kept: the uploaded files are gone
    folder = client.app_state.manager.root / job["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["result", "viewer"]


def test_several_dicom_files(client, synth):
    files = [("files", (p.name, p.read_bytes(), "application/dicom"))
             for p in sorted(synth["folder"].iterdir())]
    job = submit(client, files)
    assert job["input"] == {"kind": "dicom", "files": 8, "bytes": job["input"]["bytes"]}
    st = wait_done(client, job["id"])
    assert st["status"] == "done", st
    assert "seg.dcm" in st["links"]


def test_nifti_upload_raw_body(client, synth, tmp_path):
    import nibabel as nib

    hu = np.full((32, 32, 5), -1000, np.int16)
    hu[8:24, 8:24, :] = 30
    hu[12:16, 12:18, 1:4] = 70  # 4 x 6 x 3 = 72 voxels of "blood"
    img = nib.Nifti1Image(hu, np.diag([0.5, 0.5, 2.0, 1.0]))
    img.header.set_xyzt_units("mm")
    path = tmp_path / "head.nii.gz"
    nib.save(img, str(path))
    r = client.post("/api/jobs", content=path.read_bytes(),
                    headers={"content-type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    st = wait_done(client, r.json()["id"])
    assert st["status"] == "done", st
    rep = client.get(st["links"]["report"]).json()
    assert rep["source"] == "nifti" and rep["spacing_mm"] == [2.0, 0.5, 0.5]
    iph = next(c for c in rep["classes"] if c["label"] == 2)
    assert iph["voxels"] == 72 and iph["volume_ml"] == pytest.approx(72 * 0.5 / 1000)
    assert "labels.nii.gz" in st["links"] and "seg.dcm" not in st["links"]
    r = client.get(f"/api/jobs/{st['id']}/files/seg.dcm")
    assert r.status_code == 404 and r.json()["error"] == "no_file"


def test_png_slices_upload(client):
    from PIL import Image

    files = []
    for name in ["s10.png", "s2.png", "s1.png"]:
        a = np.full((40, 40), 60, np.uint8)
        a[10:20, 10:20] = 230
        a[0, 0] = int(name[1:-4])  # marker: slice order must be natural name order
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        files.append(("files", (name, buf.getvalue(), "image/png")))
    job = submit(client, files)
    assert job["input"]["kind"] == "image"
    st = wait_done(client, job["id"])
    assert st["status"] == "done", st
    rep = client.get(st["links"]["report"]).json()
    assert rep["spacing_mm"] is None and rep["spacing_note"] == "volume unavailable: no spacing"
    iph = next(c for c in rep["classes"] if c["label"] == 2)
    assert iph["present"] and iph["volume_ml"] is None
    assert iph["volume_note"] == "volume unavailable: no spacing"
    vol = client.get(st["links"]["volume"]).json()
    assert vol["value_space"] == "display" and vol["spacing_mm"] is None
    markers = [int(np.frombuffer(client.get(vol["slice_image_url"].format(z=z)).content, "<i2")[0])
               for z in range(3)]
    assert markers == [1, 2, 10]
    r = client.get(f"/api/jobs/{st['id']}/files/labels.nii.gz")
    assert r.status_code == 404 and "no 3-D geometry" in r.json()["message"]


def test_real_predictor_tiny_model(synth, tmp_path):
    """The real Predictor (random weights) through the same API."""
    from hemoseg.inference.predictor import Predictor

    run = make_tiny_run(tmp_path / "run", class_names=("bleed", "edema"))
    app = create_app(Predictor.from_run(run, backend="torch"), work_dir=tmp_path / "work",
                     model_info={"run": "run", "backend": "torch"})
    with TestClient(app) as c:
        assert [x["name"] for x in c.get("/api/info").json()["classes"]] == ["bleed", "edema"]
        job = submit(c, [("files", ("s.zip", synth["zip"], "application/zip"))])
        st = wait_done(c, job["id"])
        assert st["status"] == "done", st
        rep = c.get(st["links"]["report"]).json()
        assert [x["class"] for x in rep["classes"]] == ["bleed", "edema"]
        assert rep["model"]["run"] == "run"


def test_delete_and_unknown_jobs(client, synth):
    job = submit(client, [("files", ("s.zip", synth["zip"], "application/zip"))])
    wait_done(client, job["id"])
    folder = client.app_state.manager.root / job["id"]
    assert folder.is_dir()
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert not folder.exists()
    for path in [f"/api/jobs/{job['id']}", f"/api/jobs/{job['id']}/report", "/api/jobs/" + "0" * 32,
                 "/api/jobs/not-an-id", "/api/jobs/..%2F..%2Fetc/report"]:
        r = client.get(path)
        assert r.status_code == 404, path
        body = r.json()
        assert set(body) == {"error", "message"} and "\n" not in body["message"]
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 404


def test_results_not_ready_is_409(synth, tmp_path):
    import threading

    gate = threading.Event()
    app = create_app(FakePredictor(gate=gate), work_dir=tmp_path)
    with TestClient(app) as c:
        job = submit(c, [("files", ("s.zip", synth["zip"], "application/zip"))])
        r = c.get(f"/api/jobs/{job['id']}/report")
        assert r.status_code == 409 and r.json()["error"] == "not_ready"
        # deleting a running job stops it and removes its files
        assert c.delete(f"/api/jobs/{job['id']}").status_code == 204
        gate.set()
        deadline = time.time() + 10
        while (tmp_path / "jobs" / job["id"]).exists() and time.time() < deadline:
            time.sleep(0.05)
        assert not (tmp_path / "jobs" / job["id"]).exists()


def test_serve_cli_refuses_bad_arguments(tmp_path, capsys):
    from hemoseg.cli.main import main

    assert main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hemoseg: error:") and "run folder does not exist" in err and "\n" not in err
    run = make_tiny_run(tmp_path / "run")
    assert main(["serve", str(run), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(run), "--max-upload-mb", "0"])


def test_stale_job_folders_removed_on_start(tmp_path):
    stale = tmp_path / "jobs" / ("ab" * 16)
    stale.mkdir(parents=True)
    (stale / "x").write_text("old result")
    keep = tmp_path / "jobs" / "not-a-job"
    keep.mkdir()
    with TestClient(create_app(FakePredictor(), work_dir=tmp_path)):
        assert not stale.exists() and keep.exists()


def test_multiframe_dicom_upload(client, tmp_path):
    """One Enhanced CT file is a whole study: read, segmented, volumes and a SEG."""
    from predict_fixtures import ct_volume, enhanced_ct, write_ct_series

    mf = enhanced_ct(write_ct_series(tmp_path / "series", ct_volume()), tmp_path / "ct.dcm")
    r = client.post("/api/jobs", content=mf.read_bytes(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    st = wait_done(client, r.json()["id"])
    assert st["status"] == "done", st
    rep = client.get(st["links"]["report"]).json()
    assert rep["source"] == "dicom" and rep["spacing_mm"] == [2.5, 0.5, 0.5] and len(rep["slices"]) == 6
    assert next(c for c in rep["classes"] if c["label"] == 2)["voxels"] == 360  # the fixture's blob
    assert "seg.dcm" in st["links"] and "labels.nii.gz" in st["links"]


def test_flat_export_of_several_series_asks_which(client, synth, tmp_path):
    """A PACS export of a whole study in one folder (brain and bone reconstructions): the
    server lists the series and segments the one chosen, never a guess."""
    import pydicom

    flat = tmp_path / "flat"
    bone_uid = flat_export_with_second_series(synth["folder"], flat)
    brain = pydicom.dcmread(next(synth["folder"].iterdir()))
    upload = [("files", ("export.zip", zip_folder(flat), "application/zip"))]
    body = submit(client, upload, expect=422)
    assert body["error"] == "several_series"
    assert body["series"] == [{"series": str(brain.SeriesNumber), "description": brain.SeriesDescription,
                               "images": 8},
                              {"series": "7", "description": "Axial bone", "images": 8}]
    assert body["message"] == (f"the upload holds 2 image series: series {brain.SeriesNumber} "
                               f"({brain.SeriesDescription}), series 7 (Axial bone); choose one (?series=N)")
    r = client.post("/api/jobs", params={"series": "99"}, files=upload)
    assert r.status_code == 422 and r.json()["error"] == "no_such_series" and len(r.json()["series"]) == 2
    r = client.post("/api/jobs", params={"series": "7"}, files=upload)
    assert r.status_code == 202, r.text
    st = wait_done(client, r.json()["id"])
    assert st["status"] == "done", st
    rep = client.get(f"/api/jobs/{st['id']}/report").json()
    assert rep["dicom_ids"]["SeriesInstanceUID"] == bone_uid and rep["n_source_files"] == 8
    assert f"the upload holds 2 image series; series 7 was segmented (not {brain.SeriesNumber})" in rep["warnings"]
    # a choice is checked even where there is nothing to choose between
    one = [("files", ("one.zip", synth["zip"], "application/zip"))]
    r = client.post("/api/jobs", params={"series": "7"}, files=one)
    assert r.status_code == 422 and r.json()["series"] == [
        {"series": str(brain.SeriesNumber), "description": brain.SeriesDescription, "images": 8}]
    r = client.post("/api/jobs", params={"series": str(brain.SeriesNumber)}, files=one)
    assert wait_done(client, r.json()["id"])["status"] == "done"
    # the same two series as a CD export lays them out: a DICOMDIR and one folder per series
    cd = tmp_path / "cd"
    for f in flat.iterdir():
        (cd / "DICOM" / ("SE0" if f.name.startswith("a_") else "SE1")).mkdir(parents=True, exist_ok=True)
        f.rename(cd / "DICOM" / ("SE0" if f.name.startswith("a_") else "SE1") / f.name)
    (cd / "DICOMDIR").write_bytes(b"\0" * 256)
    upload = [("files", ("cd.zip", zip_folder(cd), "application/zip"))]
    body = submit(client, upload, expect=422)
    assert body["error"] == "several_series" and [c["series"] for c in body["series"]] == [str(brain.SeriesNumber), "7"]
    r = client.post("/api/jobs", params={"series": str(brain.SeriesNumber)}, files=upload)
    st = wait_done(client, r.json()["id"])
    assert st["status"] == "done", st
    rep = client.get(f"/api/jobs/{st['id']}/report").json()
    assert rep["dicom_ids"]["SeriesInstanceUID"] == brain.SeriesInstanceUID
    # the scout in a folder of its own is never a choice: with one axial series left, no question
    from pydicom.uid import generate_uid

    shutil.rmtree(cd / "DICOM" / "SE1")
    scout = pydicom.dcmread(next(synth["folder"].iterdir()))
    scout.SeriesInstanceUID, scout.SeriesNumber = generate_uid(), 1
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    (cd / "DICOM" / "SE9").mkdir()
    scout.save_as(cd / "DICOM" / "SE9" / "IM0")
    r = client.post("/api/jobs", files=[("files", ("cd.zip", zip_folder(cd), "application/zip"))])
    assert r.status_code == 202, r.text
    st = wait_done(client, r.json()["id"])
    rep = client.get(f"/api/jobs/{st['id']}/report").json()
    assert rep["dicom_ids"]["SeriesInstanceUID"] == brain.SeriesInstanceUID
    assert "the upload holds one image series; localizer series 1 left out" in rep["warnings"]
