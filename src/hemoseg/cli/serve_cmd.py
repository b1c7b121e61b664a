"""`hemoseg serve`: web viewer and JSON API for clinical research teams.

The model is loaded before the server starts listening, so a wrong run folder
fails here with one line instead of on the first upload.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import sys
from pathlib import Path

from hemoseg import RESEARCH_NOTICE
from hemoseg.cli.argtypes import positive
from hemoseg.errors import HemosegError

EPILOG = """\
Open the printed address in a browser, upload a study (a zip of DICOM files,
several DICOM files, a NIfTI volume or PNG/JPG slices), scroll through the
slices with the overlay and read the volumes. The same operations are a JSON
API, documented at /docs and /openapi.json.

There are no user accounts: keep the default --host 127.0.0.1 unless the
network is trusted. Uploaded files are deleted when their job ends; results
are kept for --job-ttl-min minutes (at most --keep-jobs jobs) and can be
deleted at once from the page or with DELETE /api/jobs/{id}.

""" + RESEARCH_NOTICE


def register(sub):
    p = sub.add_parser(
        "serve", help="web viewer and JSON API (upload a study, view overlays and volumes)",
        description="Serve a local web viewer and JSON API that segment uploaded head CT studies. "
                    + RESEARCH_NOTICE,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="training run folder holding the model")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=positive(float), default=512, metavar="N",
                   help="largest upload in MB (default 512)")
    p.add_argument("--max-concurrent", type=positive(int), default=1, metavar="N",
                   help="studies segmented at the same time (default 1)")
    p.add_argument("--max-queue", type=int, default=4, metavar="N",
                   help="studies that may wait for a worker; more get HTTP 429 (default 4)")
    p.add_argument("--keep-jobs", type=positive(int), default=20, metavar="N",
                   help="finished jobs whose results are kept (default 20)")
    p.add_argument("--job-ttl-min", type=positive(float), default=60, metavar="MIN",
                   help="minutes a finished job's results are kept (default 60)")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help="inference engine (default: auto)")
    p.add_argument("--work-dir", metavar="DIR",
                   help="folder for uploads and results (default: a temporary folder, "
                        "removed on exit)")
    p.set_defaults(func=_run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _run(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise HemosegError("the web server needs extra packages: pip install 'hemoseg[server]'") from None
    from hemoseg.inference.predictor import Predictor
    from hemoseg.server.app import LOOPBACK_HOSTS, create_app
    from hemoseg.server.limits import MB, ServerSettings

    run = Path(args.run)
    if not run.exists():
        raise HemosegError("run folder does not exist", run)
    if not (0 < args.port < 65536):
        raise HemosegError(f"--port must be 1..65535, got {args.port}")
    if args.max_queue < 0:
        raise HemosegError(f"--max-queue must be 0 or more, got {args.max_queue}")
    work_dir = None
    if args.work_dir:
        work_dir = Path(args.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_run(run, backend=args.backend)
    settings = ServerSettings(
        max_upload_bytes=int(args.max_upload_mb * MB), max_concurrent=args.max_concurrent,
        max_queue=args.max_queue, keep_jobs=args.keep_jobs, job_ttl_s=args.job_ttl_min * 60)
    loopback = _is_loopback(args.host)
    allowed = LOOPBACK_HOSTS if loopback else None
    model = {"run": run.name, "backend": str(getattr(predictor.backend, "name", args.backend)),
             "tta": False}
    app = create_app(predictor, settings, work_dir=work_dir, allowed_hosts=allowed, model_info=model)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"hemoseg: serving {run} on http://{shown}:{args.port}/ (API docs: /docs). "
          f"{RESEARCH_NOTICE}", file=sys.stderr)
    if not loopback:
        print("hemoseg: warning: listening beyond this computer; the server has no login, "
              "anyone who can reach it can upload and read results", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", log_config=_log_config(),
                server_header=False, proxy_headers=False)
    return 0


def _log_config() -> dict:
    """uvicorn's logging plus the server's own job log (ids, sizes, timings only)."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["hemoseg"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return cfg
