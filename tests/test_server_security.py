"""`hemoseg serve` against hostile or careless input and load: size limits,
content type checks, unsafe zips, the bounded queue, origin/host checks,
what is logged and what is kept on disk."""

from __future__ import annotations

import io
import logging
import stat
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from hemoseg.server.app import LOOPBACK_HOSTS, create_app  # noqa: E402
from hemoseg.server.limits import ServerSettings  # noqa: E402
from hemoseg.server.testing import (FakePredictor, ThreadedServer, synthetic_dicom_folder,  # noqa: E402
                                    zip_folder)

LIMIT = 2 << 20  # 2 MB uploads, 8 MB unpacked


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return synthetic_dicom_folder(tmp_path_factory.mktemp("synth"), slices=6, size=64)


@pytest.fixture(scope="module")
def study_zip(series):
    return zip_folder(series)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(FakePredictor(), ServerSettings(max_upload_bytes=LIMIT, max_queue=8),
                     work_dir=tmp_path_factory.mktemp("work"))
    with TestClient(app) as c:
        c.manager = app.state.manager
        yield c


def make_zip(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """entries: (name, bytes) or (ZipInfo, bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def refused(resp, status: int, code: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == ({"error", "message", "series"} if "series" in (code or "") else {"error", "message"}), body
    assert body["message"] and "\n" not in body["message"]
    if code:
        assert body["error"] == code, body
    return body["message"]


def post_zip(client, data: bytes, name="study.zip"):
    return client.post("/api/jobs", files=[("files", (name, data, "application/zip"))])


def no_leftovers(client):
    """Refused uploads leave nothing behind and give their capacity back."""
    root = client.manager.root
    stray = [p for p in root.iterdir() if client.manager.get(p.name) is None]
    assert stray == []
    assert client.manager._slots == sum(
        1 for j in client.manager._jobs.values() if j.status in ("queued", "running"))


# ---------------------------------------------------------------- content types
@pytest.mark.parametrize("name,data", [
    ("notes.txt", b"hello, not an image\n" * 20),
    ("IM0001.dcm", b"MZ\x90\x00" + b"\x00" * 300),          # an executable named .dcm
    ("scan.nii", b"\x00" * 400),
    ("slice.png", b"GIF89a" + b"\x00" * 100),
    ("fake.nii.gz", __import__("gzip").compress(b"not a nifti header" * 30)),
])
def test_wrong_type_is_415(client, name, data):
    msg = refused(client.post("/api/jobs", files=[("files", (name, data, "image/png"))]), 415,
                  "unsupported_type")
    assert "content" in msg
    no_leftovers(client)


def test_mixed_and_empty_uploads(client, series):
    from PIL import Image

    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, format="PNG")
    dcm = next(series.iterdir()).read_bytes()
    refused(client.post("/api/jobs", files=[("files", ("a.dcm", dcm, "x")), ("files", ("b.png", png.getvalue(), "x"))]),
            415, "mixed_types")
    refused(client.post("/api/jobs", files=[("files", ("a.dcm", b"", "x"))]), 422, "empty_file")
    form = b'--B\r\nContent-Disposition: form-data; name="comment"\r\n\r\nno file\r\n--B--\r\n'
    refused(client.post("/api/jobs", content=form,
                        headers={"content-type": "multipart/form-data; boundary=B"}), 422, "no_file")
    refused(client.post("/api/jobs", content=b"", headers={"content-type": "application/zip"}), 422, "no_file")
    two = make_zip([("a.zip", b"PK\x05\x06" + b"\x00" * 18)])
    refused(post_zip(client, two), 422, "no_images")
    no_leftovers(client)


# ---------------------------------------------------------------- size limits
def test_oversize_upload_is_413(client):
    big = b"\x00" * (LIMIT + 1)
    msg = refused(post_zip(client, big), 413, "upload_too_large")
    assert "2 MB" in msg and "--max-upload-mb" in msg

    def chunks():  # no Content-Length: the running byte count must stop it
        for _ in range(LIMIT // 65536 + 2):
            yield b"\x00" * 65536

    r = client.post("/api/jobs", content=chunks(), headers={"content-type": "application/zip"})
    refused(r, 413, "upload_too_large")
    no_leftovers(client)


def test_zip_bomb_is_refused(client):
    zeros = b"\x00" * (9 << 20)  # 9 MB of zeros deflate to ~9 KB: over the 8 MB unpacked limit
    refused(post_zip(client, make_zip([("a/slice.dcm", zeros)])), 413, "zip_bomb")
    ratio = b"\x00" * (3 << 20)  # within the size limit, but compressed ~1000:1
    msg = refused(post_zip(client, make_zip([("x.dcm", ratio)])), 413, "zip_bomb")
    assert "100:1" in msg and "zip bomb" in msg
    many = make_zip([(f"f{i}.txt", b"") for i in range(10001)], zipfile.ZIP_STORED)
    refused(post_zip(client, many), 413, "zip_too_many_entries")
    no_leftovers(client)


# ---------------------------------------------------------------- unsafe zips
def test_unsafe_zip_entries(client, study_zip, tmp_path):
    for name in ["../evil.dcm", "a/../../evil.dcm", "/etc/evil.dcm", "C:/evil.dcm", "a\\..\\..\\evil"]:
        msg = refused(post_zip(client, make_zip([("ok.txt", b"x"), (name, b"x")])), 422,
                      "unsafe_zip_entry")
        assert "refused" in msg
    link = zipfile.ZipInfo("link.dcm")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    refused(post_zip(client, make_zip([(link, b"/etc/passwd")])), 422, "unsafe_zip_entry")
    assert not (tmp_path.parent / "evil.dcm").exists()
    no_leftovers(client)


def test_empty_damaged_and_useless_zips(client, study_zip):
    msg = refused(post_zip(client, make_zip([])), 422, "empty_zip")
    assert msg == "zip archive is empty"
    refused(post_zip(client, study_zip[: len(study_zip) // 2]), 422, "bad_zip")
    msg = refused(post_zip(client, make_zip([("README.txt", b"hello"), ("notes.doc", b"x" * 50)])),
                  422, "no_images")
    assert "2 other file(s)" in msg
    refused(post_zip(client, make_zip([("__MACOSX/._x.dcm", b"x"), (".hidden.dcm", b"x")])), 422,
            "empty_zip")
    lying = make_zip([("slice.dcm", b"just text, no DICOM header")])
    assert "named .dcm" in refused(post_zip(client, lying), 415, "unsupported_type")
    no_leftovers(client)


def test_several_series_or_studies_in_one_zip_is_422(client, series, tmp_path):
    """One folder per series (as a CD export lays them out): the server asks which, naming
    them by folder where their SeriesNumbers clash; a DICOM series beside a NIfTI volume
    is two studies."""
    entries = [(f"{d}/{p.name}", p.read_bytes()) for d in ("one", "two") for p in series.iterdir()]
    r = post_zip(client, make_zip(entries))
    msg = refused(r, 422, "several_series")
    keys = [c["series"] for c in r.json()["series"]]  # the upload's folders, renamed: no names leak
    assert len(keys) == 2 and msg.startswith(f"the upload holds 2 image series: series {keys[0]} (")
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.full((16, 16, 4), 30, np.int16), np.eye(4)), str(tmp_path / "vol.nii.gz"))
    nifti = (tmp_path / "vol.nii.gz").read_bytes()
    entries = [(f"one/{p.name}", p.read_bytes()) for p in series.iterdir()] + [("vol.nii.gz", nifti)]
    assert "2 studies" in refused(post_zip(client, make_zip(entries)), 422, "several_studies")


# ---------------------------------------------------------------- files and logs
def test_no_patient_data_in_logs_and_uploads_deleted(client, series, study_zip, caplog):
    import pydicom

    ds = pydicom.dcmread(next(series.iterdir()))
    secrets = [str(ds.PatientName), str(ds.PatientID), series.name] + [p.name for p in series.iterdir()]
    with caplog.at_level(logging.DEBUG, logger="hemoseg"):
        r = client.post("/api/jobs", files=[("files", (p.name, p.read_bytes(), "application/dicom"))
                                            for p in series.iterdir()])
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.time() + 20
        while client.get(f"/api/jobs/{job_id}").json()["status"] != "done" and time.time() < deadline:
            time.sleep(0.05)
        refused(post_zip(client, make_zip([(f"{ds.PatientName}/x.dcm", b"no header")])), 415)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert job_id in text
    for s in secrets:
        assert s not in text, s
    folder = client.manager.root / job_id
    assert sorted(p.name for p in folder.iterdir()) == ["result", "viewer"]
    # the patient's name never reaches the results' study name or paths
    rep = client.get(f"/api/jobs/{job_id}/report").json()
    assert str(ds.PatientName) not in rep["study"] + rep["input"]


def test_failed_job_deletes_upload_and_reports_one_line(client, series):
    import pydicom

    ds = pydicom.dcmread(next(series.iterdir()))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = post_zip(client, make_zip([("only.dcm", buf.getvalue())]))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.time() + 20
    while (st := client.get(f"/api/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.time() < deadline
        time.sleep(0.05)
    assert st["status"] == "failed" and "no pixel data" in st["error"] and "\n" not in st["error"]
    assert str(client.manager.root) not in st["error"]  # no server paths in messages
    assert not (client.manager.root / job_id / "upload").exists()
    refused(client.get(f"/api/jobs/{job_id}/report"), 409, "not_ready")


def test_keep_jobs_limit_evicts_oldest(series, study_zip, tmp_path):
    app = create_app(FakePredictor(), ServerSettings(keep_jobs=1), work_dir=tmp_path)
    with TestClient(app) as c:
        ids = []
        for _ in range(2):
            r = post_zip(c, study_zip)
            ids.append(r.json()["id"])
            deadline = time.time() + 20
            while c.get(f"/api/jobs/{ids[-1]}").json()["status"] != "done":
                assert time.time() < deadline
                time.sleep(0.05)
        post_zip(c, b"not a zip")  # any submit attempt runs eviction too
        app.state.manager.evict()
        refused(c.get(f"/api/jobs/{ids[0]}"), 404, "unknown_job")
        assert not (tmp_path / "jobs" / ids[0]).exists()
        assert c.get(f"/api/jobs/{ids[1]}").json()["status"] == "done"


# ---------------------------------------------------------------- queue and headers
def test_queue_full_is_429_with_retry_after(study_zip, tmp_path):
    gate = threading.Event()
    app = create_app(FakePredictor(gate=gate), ServerSettings(max_concurrent=1, max_queue=1),
                     work_dir=tmp_path)
    with TestClient(app) as c:
        try:
            assert post_zip(c, study_zip).status_code == 202  # runs (held by the gate)
            assert post_zip(c, study_zip).status_code == 202  # waits
            r = post_zip(c, study_zip)
            msg = refused(r, 429, "queue_full")
            assert int(r.headers["retry-after"]) >= 1 and "retry" in msg
            assert c.get("/health").json()["jobs_waiting"] >= 1
        finally:
            gate.set()


def test_origin_host_and_headers(study_zip, tmp_path):
    app = create_app(FakePredictor(), work_dir=tmp_path, allowed_hosts=LOOPBACK_HOSTS)
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        r = c.get("/")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert c.get("/api/info").headers["cache-control"] == "no-store"
        assert "content-security-policy" not in c.get("/docs").headers  # Swagger UI needs its CDN
        refused(c.get("/health", headers={"host": "evil.example"}), 403, "bad_host")
        refused(c.post("/api/jobs", content=study_zip, headers={"origin": "http://evil.example"}),
                403, "cross_origin")
        r = c.post("/api/jobs", content=study_zip, headers={"origin": "http://127.0.0.1:8000"})
        assert r.status_code == 202
        assert c.get("/health", headers={"host": "localhost:8000"}).status_code == 200


def test_concurrent_uploads_stay_bounded(study_zip, tmp_path):
    """Fast version of benchmarks/load_test.py: 8 simultaneous uploads over real
    sockets; each is accepted or refused with 429/503, and /health answers."""
    gate = threading.Event()
    app = create_app(FakePredictor(gate=gate), ServerSettings(max_concurrent=1, max_queue=2),
                     work_dir=tmp_path)
    with ThreadedServer(app) as srv:
        def upload(_):
            with httpx.Client(base_url=srv.url, timeout=20) as h:
                return h.post("/api/jobs", files=[("files", ("s.zip", study_zip, "application/zip"))])

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(upload, range(8)))
            health = httpx.get(srv.url + "/health", timeout=5)
        codes = [r.status_code for r in results]
        assert set(codes) <= {202, 429, 503}, codes
        assert 1 <= codes.count(202) <= 3  # running + 2 waiting
        for r in results:
            if r.status_code != 202:
                assert r.json()["error"] in ("queue_full", "shutting_down") and "retry-after" in r.headers
        assert health.status_code == 200 and health.json()["status"] == "ok"
        gate.set()
        accepted = [r.json()["id"] for r in results if r.status_code == 202]
        deadline = time.time() + 30
        with httpx.Client(base_url=srv.url, timeout=5) as h:
            for job_id in accepted:
                while (st := h.get(f"/api/jobs/{job_id}").json())["status"] in ("queued", "running"):
                    assert time.time() < deadline
                    time.sleep(0.05)
                assert st["status"] == "done"
            assert h.post("/api/jobs", files=[("files", ("s.zip", study_zip, "application/zip"))]).status_code == 202
