"""`hemoseg serve`: a local web viewer and JSON API around the predictor.

One FastAPI app serves both the single-page viewer (static/) and the API it
uses, so anything the page does another program can do too (see /docs).
The server is meant for one workstation or a trusted network: it has no user
accounts, so it binds to 127.0.0.1 unless told otherwise, refuses Host
headers it does not expect (DNS rebinding) and cross-origin form posts, and
treats a job id (128 random bits) as the key to that job's results.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from hemoseg import RESEARCH_NOTICE, __version__
from hemoseg.server.jobs import VIEWER_ARRAYS, Busy, Job, JobManager
from hemoseg.server.limits import ServerSettings
from hemoseg.server.security import ACCEPTED, ApiError, prepare_upload, receive_upload, too_large

log = logging.getLogger("hemoseg.server")

STATIC = Path(__file__).resolve().parent / "static"
JOB_ID = r"^[0-9a-f]{32}$"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1"]
WINDOW_PRESETS = [
    {"name": "brain", "level": 40, "width": 80},
    {"name": "subdural", "level": 75, "width": 215},
    {"name": "bone", "level": 600, "width": 2800},
]
# name in the API -> (file in the result folder, media type, key in report["files"])
DOWNLOADS = {
    "labels.nii.gz": ("labels.nii.gz", "application/gzip", "nifti"),
    "seg.dcm": ("seg.dcm", "application/dicom", "dicom_seg"),
    "report.json": ("report.json", "application/json", None),
    "report.csv": ("report.csv", "text/csv; charset=utf-8", None),
    "report.html": ("report.html", "text/html; charset=utf-8", None),
    "montage.png": ("montage.png", "image/png", "montage"),
}
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"


# --------------------------------------------------------------------------
# response models (they are the API documentation at /docs)
# --------------------------------------------------------------------------
class SeriesChoice(BaseModel):
    series: str = Field(description="Value for `?series=`: the SeriesNumber (or the tail of the UID).")
    description: str = Field(description="SeriesDescription, as the scanner wrote it (may be empty).")
    images: int


class ErrorResponse(BaseModel):
    error: str = Field(description="Machine-readable code, e.g. `upload_too_large`, `queue_full`.")
    message: str = Field(description="One-line explanation for people.")
    series: list[SeriesChoice] | None = Field(
        None, description="With `several_series` and `no_such_series`: the image series the upload holds.")


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    jobs_running: int
    jobs_waiting: int
    capacity: int = Field(description="Jobs held at once (running + waiting).")


class ClassInfo(BaseModel):
    label: int = Field(description="Value of this class in the label volume.")
    name: str
    color: str = Field(description="Overlay colour, #rrggbb (same as every hemoseg figure).")


class WindowPreset(BaseModel):
    name: str
    level: float = Field(description="Window centre in HU.")
    width: float = Field(description="Window width in HU.")


class ServerInfo(BaseModel):
    notice: str = Field(description="Research-use notice; show it with every result.")
    version: str
    classes: list[ClassInfo]
    window_presets: list[WindowPreset]
    accepted_uploads: str
    limits: dict[str, float]
    model: dict[str, Any]


class JobInput(BaseModel):
    kind: str = Field(description="zip | dicom | nifti | image")
    files: int
    bytes: int


class JobStatus(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    stage: str = Field(description="queued | reading | segmenting | writing | done | failed | cancelled")
    slices_done: int
    slices_total: int | None = Field(description="Known once the study has been read.")
    progress: float = Field(ge=0, le=1)
    queue_position: int | None = Field(description="1 = next to run; null unless queued.")
    error: str | None = Field(description="One-line reason when status is failed.")
    warnings: list[str]
    input: JobInput
    created: float
    started: float | None
    finished: float | None
    links: dict[str, str] = Field(description="URLs of this job's status, report, data and files.")


class ClassVolume(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    class_name: str = Field(alias="class")
    label: int
    present: bool
    voxels: int
    volume_ml: float | None
    volume_note: str | None = Field(description="Why volume_ml is null, e.g. "
                                    "'volume unavailable: no spacing'.")


class StudyReport(BaseModel):
    """The study's report.json (abridged here; every field is returned)."""
    model_config = ConfigDict(extra="allow")
    notice: str
    study: str
    source: str
    shape_zhw: list[int]
    spacing_mm: list[float] | None
    spacing_note: str | None
    any_hemorrhage: bool
    total: dict[str, Any]
    classes: list[ClassVolume]
    files: dict[str, str | None]
    warnings: list[str]


class VolumeInfo(BaseModel):
    shape_zhw: list[int]
    spacing_mm: list[float] | None
    value_space: Literal["hounsfield", "display"] = Field(
        description="hounsfield: window with presets; display: 8-bit image input, 0..255.")
    image_dtype: Literal["int16"] = "int16"
    labels_dtype: Literal["uint8"] = "uint8"
    byte_order: Literal["little"] = "little"
    default_window: WindowPreset
    labels_per_slice: list[list[int]] = Field(description="Label values present on each slice.")
    slice_image_url: str = Field(description="Template; replace {z}. Raw int16, row-major (H, W).")
    slice_labels_url: str = Field(description="Template; replace {z}. Raw uint8, row-major (H, W).")
    volume_image_url: str = Field(description="Whole study, raw int16 (Z, H, W).")
    volume_labels_url: str = Field(description="Whole label volume, raw uint8 (Z, H, W).")


def _errors(*codes: int) -> dict:
    text = {400: "Malformed request.", 403: "Cross-origin request or unexpected Host header.",
            404: "Unknown or expired job, or file not available for this study.",
            409: "Job not finished yet.", 413: "Upload or its unpacked content too large.",
            415: "Content is not a zip, DICOM, NIfTI, PNG or JPEG file.",
            422: "Upload readable but unusable (empty, unsafe zip, several studies, several series "
                 "and none chosen, ...).",
            429: "Queue full; retry after the Retry-After header's seconds.",
            503: "Server shutting down or out of disk; retry later."}
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}


UPLOAD_BODY = {"requestBody": {"required": True, "description": (
    f"One study: {ACCEPTED}. Either multipart/form-data with one or more `files` parts, or "
    "one file as the raw request body. Types are read from content, not names."),
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    }}}


# --------------------------------------------------------------------------
# middleware
# --------------------------------------------------------------------------
class GuardMiddleware:
    """Host allow-list, same-origin writes and security headers, as plain ASGI
    so uploads and downloads stream through untouched."""

    def __init__(self, app, allowed_hosts: list[str] | None):
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        problem = None
        if self.allowed is not None and _hostname(host) not in self.allowed:
            problem = ("bad_host", "unexpected Host header; open the viewer via the address "
                       "hemoseg serve printed")
        elif scope["method"] in ("POST", "PUT", "PATCH", "DELETE") and "origin" in headers:
            origin = headers["origin"]
            if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
                problem = ("cross_origin", "cross-origin requests are refused")
        if problem:
            resp = JSONResponse({"error": problem[0], "message": problem[1]}, status_code=403)
            return await resp(scope, receive, send)
        path = scope["path"]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                h = [(k, v) for k, v in message.get("headers", [])]
                names = {k.lower() for k, _ in h}
                extra = {b"x-content-type-options": b"nosniff", b"x-frame-options": b"DENY",
                         b"referrer-policy": b"no-referrer"}
                if not path.startswith(("/docs", "/redoc")) and b"content-security-policy" not in names:
                    extra[b"content-security-policy"] = CSP.encode()
                if path.startswith("/api/"):
                    extra[b"cache-control"] = b"no-store"
                h += [(k, v) for k, v in extra.items() if k not in names]
                message = {**message, "headers": h}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


# --------------------------------------------------------------------------
# app
# --------------------------------------------------------------------------
def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb)


def create_app(predictor, settings: ServerSettings | None = None, *, work_dir: str | Path | None = None,
               allowed_hosts: list[str] | None = None, model_info: dict | None = None) -> FastAPI:
    """`predictor`: a loaded Predictor (anything with class_names, preprocessing,
    predict_volume). `allowed_hosts`: Host names accepted (None: any, for tests).
    `work_dir`: where jobs live; default a fresh temporary folder removed on exit."""
    from hemoseg.data.figures import class_colors

    settings = settings or ServerSettings()
    own_dir = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="hemoseg-serve-")) if own_dir else Path(work_dir)
    manager = JobManager(predictor, root / "jobs", settings, model_info=model_info)
    names = list(predictor.class_names)
    colors = class_colors(len(names))
    info = ServerInfo(
        notice=RESEARCH_NOTICE, version=__version__,
        classes=[ClassInfo(label=k + 1, name=n, color=_hex(colors[k])) for k, n in enumerate(names)],
        window_presets=[WindowPreset(**p) for p in WINDOW_PRESETS], accepted_uploads=ACCEPTED,
        limits={k: float(v) for k, v in settings.public().items()},
        model={k: v for k, v in (model_info or {}).items() if k in ("run", "backend", "tta")})

    @asynccontextmanager
    async def lifespan(app):
        manager.start()
        log.info("hemoseg server ready (%d worker(s), queue %d, upload limit %d bytes)",
                 settings.max_concurrent, settings.max_queue, settings.max_upload_bytes)
        try:
            yield
        finally:
            manager.stop()
            if own_dir:
                shutil.rmtree(root, ignore_errors=True)

    app = FastAPI(
        title="hemoseg", version=__version__, lifespan=lifespan,
        description=("Segment and measure intracranial hemorrhage on head CT.\n\n"
                     f"**{RESEARCH_NOTICE}**\n\nWorkflow: `POST /api/jobs` with a study, poll "
                     "`GET /api/jobs/{id}` until `status` is `done`, then read "
                     "`/api/jobs/{id}/report`, slice data and files. Errors are "
                     "`{\"error\": code, \"message\": one line}`."))
    app.state.manager = manager
    app.state.settings = settings
    app.add_middleware(GuardMiddleware, allowed_hosts=allowed_hosts)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ---- errors -------------------------------------------------------
    def error(status: int, code: str, message: str, headers: dict | None = None,
              extra: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": code, "message": " ".join(message.split()), **(extra or {})},
                            status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        log.info("request refused: %d %s", exc.status, exc.code)
        return error(exc.status, exc.code, exc.message, exc.headers, exc.extra)

    @app.exception_handler(Busy)
    async def _busy(request, exc: Busy):
        log.info("upload refused: %d %s", exc.status, exc.code)
        return error(exc.status, exc.code, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        status = 404 if first.get("loc", ("",))[0] == "path" else 422
        return error(status, "not_found" if status == 404 else "invalid_request",
                     f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        log.error("internal error %s on %s %s", type(exc).__name__, request.method,
                  request.url.path)
        return error(500, "internal_error", "internal server error; the server log has details")

    # ---- helpers ------------------------------------------------------
    def job_or_404(job_id: str) -> Job:
        job = manager.get(job_id)
        if job is None:
            raise ApiError(404, "unknown_job", "unknown or expired job (results are kept for "
                           f"{settings.job_ttl_s / 60:g} min, at most {settings.keep_jobs} jobs)")
        return job

    def done_or_409(job_id: str) -> Job:
        job = job_or_404(job_id)
        if job.status != "done":
            raise ApiError(409, "not_ready", f"job is {job.status}" +
                           (f": {job.error}" if job.error else "; poll its status until done"))
        return job

    def status_of(job: Job) -> JobStatus:
        base = f"/api/jobs/{job.id}"
        links = {"status": base}
        if job.status == "done":
            links.update(report=f"{base}/report", volume=f"{base}/volume")
            files = _report(job).get("files", {})
            for name, (_, _, key) in DOWNLOADS.items():
                if key is None or files.get(key):
                    links[name] = f"{base}/files/{name}"
        total = job.slices_total
        if job.status == "done":
            progress = 1.0
        elif total:
            progress = min(1.0, job.slices_done / total) * 0.95
        else:
            progress = 0.0
        return JobStatus(
            id=job.id, status=job.status, stage=job.stage, slices_done=job.slices_done,
            slices_total=total, progress=round(progress, 4),
            queue_position=manager.queue_position(job) if job.status == "queued" else None,
            error=job.error, warnings=job.warnings,
            input=JobInput(kind=job.kind, files=job.n_files, bytes=job.upload_bytes),
            created=job.created, started=job.started, finished=job.finished, links=links)

    def _report(job: Job) -> dict:
        import json

        cached = getattr(job, "_report_cache", None)
        if cached is None:
            cached = json.loads((job.result_dir / "report.json").read_text(encoding="utf-8"))
            job._report_cache = cached
        return cached

    def _prepare(files, slot, total, series: str | None):
        from hemoseg.inference.readers import discover

        prepared = prepare_upload(files, slot.folder / "upload", settings)
        shutil.rmtree(slot.folder / "incoming", ignore_errors=True)
        items, problems = discover([prepared.root], each_series=True)
        if problems:
            msg = str(problems[0][1]).replace(str(prepared.root), "upload")
            raise ApiError(422, "no_study", msg)
        if all(i.kind == "dicom" for i in items) and (len(items) > 1 or series is not None):
            items = [_choose_series(items, series)]
        elif series is not None:
            raise ApiError(422, "no_such_series", "series chooses among DICOM series; the upload holds none")
        if len(items) != 1:
            raise ApiError(422, "several_studies",
                           f"the upload holds {len(items)} studies (separate series or volumes); "
                           "upload one study at a time")
        item = items[0]
        item.name = f"job-{slot.id[:8]}"  # never the folder or patient name
        item.origin = Path("upload")
        return prepared, item

    def _choose_series(items, series: str | None):
        """Several DICOM series in one upload: a flat PACS export (brain and bone kernels
        in one folder) or a CD export (one folder per series). Which one to segment is the
        reader's choice, never a guess. Series are named by SeriesNumber where those are
        unique, else by folder."""
        from hemoseg.inference.readers import series_label

        labels = [series_label(i) for i in items]
        scouts = [lab[0] or i.name for i, lab in zip(items, labels) if lab[2]]
        left_out = ""
        if scouts and len(scouts) < len(items):  # a CD export keeps the scout in a folder of its own
            items, labels = zip(*[(i, lab) for i, lab in zip(items, labels) if not lab[2]])
            left_out = f"; localizer series {', '.join(scouts)} left out"
        numbers = [n for n, _, _ in labels]
        keys = numbers if None not in numbers and len(set(numbers)) == len(numbers) else [i.name for i in items]
        choices = [{"series": k, "description": d, "images": len(i.paths)}
                   for k, (_, d, _), i in zip(keys, labels, items)]
        if len(items) == 1 and left_out:
            items[0].notes = [f"the upload holds one image series{left_out}"]
        if len(items) == 1 and series is None:
            return items[0]
        listing = ", ".join(f"series {c['series']}" + (f" ({c['description']})" if c["description"] else "")
                            for c in choices)
        if series is None:
            raise ApiError(422, "several_series", f"the upload holds {len(items)} image series: {listing}; "
                           "choose one (?series=N)", extra={"series": choices})
        if series not in keys:
            raise ApiError(422, "no_such_series", f"the upload holds no series {series}; it holds {listing}",
                           extra={"series": choices})
        item = items[keys.index(series)]
        if len(items) > 1:  # a choice that matched the only series needs no note
            others = ", ".join(k for k in keys if k != series)
            item.notes = [f"the upload holds {len(items)} image series; series {series} was segmented "
                          f"(not {others}){left_out}"]
        return item

    # ---- routes -------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/health", response_model=Health, tags=["server"],
             summary="Liveness and load (answers even while jobs run)")
    async def health():
        s = manager.stats()
        return Health(status="ok", version=__version__, jobs_running=s["running"],
                      jobs_waiting=s["waiting"], capacity=s["capacity"])

    @app.get("/api/info", response_model=ServerInfo, tags=["server"],
             summary="Classes with colours, window presets, limits and the research notice")
    async def server_info():
        return info

    @app.post("/api/jobs", status_code=202, response_model=JobStatus, tags=["jobs"],
              summary="Upload one study and queue it for segmentation",
              responses=_errors(400, 403, 413, 415, 422, 429, 503), openapi_extra=UPLOAD_BODY)
    async def submit_job(request: Request, series: str | None = Query(
            None, max_length=64, description="Which image series to segment when the upload holds several "
                                             "(a flat PACS export); the `several_series` error lists them.")):
        length = request.headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise ApiError(400, "bad_request", "invalid Content-Length header") from None
            if n > settings.max_upload_bytes:
                raise too_large(settings.max_upload_bytes)
        slot = manager.reserve()  # before reading the body: refuse early when busy
        try:
            files, total = await receive_upload(request, slot.folder / "incoming", settings)
            prepared, item = await run_in_threadpool(_prepare, files, slot, total, series)
            job = manager.submit(slot, item, kind=prepared.kind, n_files=prepared.n_files,
                                 upload_bytes=total, warnings=prepared.warnings)
        except BaseException:
            slot.release()
            raise
        body = status_of(job)
        return JSONResponse(body.model_dump(), status_code=202,
                            headers={"Location": f"/api/jobs/{job.id}"})

    @app.get("/api/jobs/{job_id}", response_model=JobStatus, tags=["jobs"],
             summary="Job status and progress (slices done / total)", responses=_errors(404))
    async def job_status(job_id: str = PathParam(pattern=JOB_ID)):
        return status_of(job_or_404(job_id))

    @app.delete("/api/jobs/{job_id}", status_code=204, tags=["jobs"],
                summary="Delete a job and all its files (stops it if running)",
                responses=_errors(403, 404))
    async def delete_job(job_id: str = PathParam(pattern=JOB_ID)):
        if not await run_in_threadpool(manager.delete, job_id):
            job_or_404(job_id)
        return Response(status_code=204)

    @app.get("/api/jobs/{job_id}/report", response_model=StudyReport, tags=["results"],
             summary="The study report: volumes per class in mL, warnings, files",
             responses=_errors(404, 409))
    async def job_report(job_id: str = PathParam(pattern=JOB_ID)):
        return _report(done_or_409(job_id))

    @app.get("/api/jobs/{job_id}/volume", response_model=VolumeInfo, tags=["results"],
             summary="Geometry and data URLs for viewers", responses=_errors(404, 409))
    async def job_volume(job_id: str = PathParam(pattern=JOB_ID)):
        job = done_or_409(job_id)
        v = job.volume
        rep = _report(job)
        names = list(predictor.class_names)
        per_slice = [[names.index(c) + 1 for c in s["classes"] if c in names] for s in rep["slices"]]
        hu = v["is_hu"]
        base = f"/api/jobs/{job.id}"
        return VolumeInfo(
            shape_zhw=v["shape_zhw"], spacing_mm=v["spacing_mm"],
            value_space="hounsfield" if hu else "display",
            default_window=WindowPreset(**WINDOW_PRESETS[0]) if hu else
            WindowPreset(name="display", level=127.5, width=255),
            labels_per_slice=per_slice,
            slice_image_url=f"{base}/slices/{{z}}/image", slice_labels_url=f"{base}/slices/{{z}}/labels",
            volume_image_url=f"{base}/volume/image", volume_labels_url=f"{base}/volume/labels")

    def _viewer_array(job: Job, what: str) -> np.memmap:
        name, dtype = VIEWER_ARRAYS[what]
        return np.memmap(job.viewer_dir / name, dtype=dtype, mode="r", shape=tuple(job.volume["shape_zhw"]))

    @app.get("/api/jobs/{job_id}/slices/{z}/{what}", tags=["results"],
             summary="One slice as raw little-endian binary (image: int16, labels: uint8)",
             response_class=Response, responses={
                 200: {"content": {"application/octet-stream": {}},
                       "description": "Row-major (H, W); X-Shape header holds 'H,W'."},
                 **_errors(404, 409)})
    def slice_data(job_id: str = PathParam(pattern=JOB_ID), z: int = PathParam(ge=0),
                   what: Literal["image", "labels"] = PathParam()):
        job = done_or_409(job_id)
        arr = _viewer_array(job, what)
        if z >= arr.shape[0]:
            raise ApiError(404, "no_slice", f"slice {z} is out of range (0..{arr.shape[0] - 1})")
        data = np.ascontiguousarray(arr[z])
        return Response(data.tobytes(), media_type="application/octet-stream",
                        headers={"X-Shape": f"{data.shape[0]},{data.shape[1]}",
                                 "X-Dtype": str(data.dtype.name)})

    @app.get("/api/jobs/{job_id}/volume/{what}", tags=["results"],
             summary="The whole study or label volume as raw little-endian binary",
             response_class=StreamingResponse, responses={
                 200: {"content": {"application/octet-stream": {}},
                       "description": "Row-major (Z, H, W); X-Shape header holds 'Z,H,W'."},
                 **_errors(404, 409)})
    def volume_data(job_id: str = PathParam(pattern=JOB_ID),
                    what: Literal["image", "labels"] = PathParam()):
        job = done_or_409(job_id)
        name, dtype = VIEWER_ARRAYS[what]
        path = job.viewer_dir / name

        def chunks():
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    yield block

        return StreamingResponse(chunks(), media_type="application/octet-stream",
                                 headers={"X-Shape": ",".join(map(str, job.volume["shape_zhw"])),
                                          "X-Dtype": dtype.name,
                                          "Content-Length": str(path.stat().st_size)})

    @app.get("/api/jobs/{job_id}/files/{name}", tags=["results"],
             summary="Download a result file: labels.nii.gz, seg.dcm, report.json/.csv/.html, "
                     "montage.png", response_class=FileResponse,
             responses={200: {"content": {t: {} for _, t, _ in DOWNLOADS.values()},
                              "description": "The file (report.html opens inline)."},
                        **_errors(404, 409)})
    def download(job_id: str = PathParam(pattern=JOB_ID),
                 name: Literal[tuple(DOWNLOADS)] = PathParam()):  # type: ignore[valid-type]
        job = done_or_409(job_id)
        fname, media, key = DOWNLOADS[name]
        path = job.result_dir / fname
        if (key is not None and not _report(job).get("files", {}).get(key)) or not path.is_file():
            why = {"labels.nii.gz": "PNG/JPEG input has no 3-D geometry",
                   "seg.dcm": "only for DICOM input with findings"}.get(name, "not written")
            raise ApiError(404, "no_file", f"{name} is not available for this study ({why})")
        inline = name in ("report.html", "montage.png")
        resp = FileResponse(path, media_type=media, filename=f"hemoseg-{job.id[:8]}-{fname}",
                            content_disposition_type="inline" if inline else "attachment")
        if name == "report.html":
            resp.headers["Content-Security-Policy"] = REPORT_CSP
        return resp

    return app
