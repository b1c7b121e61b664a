"""Bounded job queue for the web server.

A fixed number of worker threads (--max-concurrent) run studies; a bounded
number more may wait. Capacity is reserved *before* an upload is read, so a
burst of large uploads is refused with 429 instead of filling the disk first.
Each job keeps only its results (reports, label volume, viewer arrays); the
uploaded files are deleted as soon as the job ends, and finished jobs expire
after a TTL or when more than `keep_jobs` are kept.

Logs carry job ids, sizes, counts and durations only: never file names,
study names or DICOM attributes, which can identify a patient.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemoseg.errors import HemosegError
from hemoseg.server.limits import ServerSettings

log = logging.getLogger("hemoseg.server")

FINISHED = ("done", "failed", "cancelled")
# What the viewer reads back per finished job: file name and little-endian dtype; shape is job.volume["shape_zhw"].
VIEWER_ARRAYS = {"image": ("image.raw", np.dtype("<i2")), "labels": ("labels.raw", np.dtype("u1"))}


class Busy(Exception):
    """No room for another job: 429 (queue full) or 503 (shutting down, disk full)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int):
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after


class JobCancelled(Exception):
    pass


@dataclass
class Job:
    id: str
    folder: Path
    kind: str = ""
    n_files: int = 0
    upload_bytes: int = 0
    created: float = field(default_factory=time.time)
    status: str = "queued"
    """queued | running | done | failed | cancelled"""
    stage: str = "queued"
    """queued | reading | segmenting | writing | done | failed | cancelled"""
    slices_done: int = 0
    slices_total: int | None = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    warnings: list[str] = field(default_factory=list)
    volume: dict | None = None
    item: object | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    deleted: bool = False
    _slot_held: bool = True

    @property
    def result_dir(self) -> Path:
        return self.folder / "result"

    @property
    def viewer_dir(self) -> Path:
        return self.folder / "viewer"

    @property
    def upload_dir(self) -> Path:
        return self.folder / "upload"


class Slot:
    """Capacity reserved for one upload; becomes the job's slot on submit."""

    def __init__(self, manager: "JobManager", job_id: str, folder: Path):
        self.manager, self.id, self.folder = manager, job_id, folder
        self.used = False

    def release(self) -> None:
        """Give the capacity back (upload refused); removes what it wrote."""
        if not self.used:
            self.used = True
            shutil.rmtree(self.folder, ignore_errors=True)
            self.manager._release()


class JobManager:
    def __init__(self, predictor, root: Path, settings: ServerSettings, model_info: dict | None = None):
        self._predictor_or_factory = predictor
        self._predictor = None if callable(predictor) and not hasattr(predictor, "predict_volume") else predictor
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.model_info = dict(model_info or {})
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._waiting: deque[str] = deque()
        self._slots = 0
        self._running = 0
        self._avg_s = 10.0
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------
    @property
    def predictor(self):
        with self._lock:
            if self._predictor is None:
                self._predictor = self._predictor_or_factory()
            return self._predictor

    def start(self) -> None:
        # Jobs live in memory only, so folders left by an earlier server are
        # unreachable: remove them (only ours, named by a 32-hex job id).
        for old in self.root.iterdir():
            if old.is_dir() and len(old.name) == 32 and all(c in "0123456789abcdef" for c in old.name):
                shutil.rmtree(old, ignore_errors=True)
        for i in range(self.settings.max_concurrent):
            t = threading.Thread(target=self._worker, name=f"hemoseg-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._janitor, name="hemoseg-janitor", daemon=True)
        t.start()
        self._threads.append(t)
        if self._predictor is not None:  # a loaded model: make the first job as fast as the rest
            from hemoseg.inference.pipeline import warm_up

            threading.Thread(target=warm_up, args=(self._predictor,), name="hemoseg-warm", daemon=True).start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._wake:
            self._stopping = True
            for job in self._jobs.values():
                job.cancel.set()
            self._wake.notify_all()
        for t in self._threads:
            t.join(timeout)

    # ------------------------------------------------------------------
    def retry_after(self) -> int:
        with self._lock:
            ahead = len(self._waiting) + self._running
        return int(min(600, max(1, math.ceil(self._avg_s * max(ahead, 1) / self.settings.max_concurrent))))

    def reserve(self) -> Slot:
        """Claim room for one more job or raise Busy; call before reading the body."""
        with self._lock:
            if self._stopping:
                raise Busy(503, "shutting_down", "the server is shutting down", 30)
            if self._slots >= self.settings.capacity:
                raise Busy(429, "queue_full",
                           f"the server is busy ({self._running} running, {len(self._waiting)} "
                           f"waiting, at most {self.settings.capacity} at a time); retry later",
                           self.retry_after())
            free = shutil.disk_usage(self.root).free
            if free < self.settings.min_free_disk_bytes:
                raise Busy(503, "disk_full", "the server is low on disk space; retry later", 60)
            self._slots += 1
            job_id = secrets.token_hex(16)
        folder = self.root / job_id
        folder.mkdir()
        return Slot(self, job_id, folder)

    def _release(self) -> None:
        with self._lock:
            self._slots -= 1

    def submit(self, slot: Slot, item, *, kind: str, n_files: int, upload_bytes: int,
               warnings: list[str]) -> Job:
        job = Job(id=slot.id, folder=slot.folder, kind=kind, n_files=n_files,
                  upload_bytes=upload_bytes, warnings=list(warnings), item=item)
        with self._wake:
            slot.used = True
            self._jobs[job.id] = job
            self._waiting.append(job.id)
            self._wake.notify_all()  # the janitor waits on it too
        log.info("job %s queued: %s, %d file(s), %d bytes", job.id, kind, n_files, upload_bytes)
        self.evict()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def queue_position(self, job: Job) -> int | None:
        with self._lock:
            try:
                return self._waiting.index(job.id) + 1
            except ValueError:
                return None

    def stats(self) -> dict:
        with self._lock:
            return {"running": self._running, "waiting": len(self._waiting),
                    "capacity": self.settings.capacity,
                    "kept": sum(1 for j in self._jobs.values() if j.status in FINISHED)}

    def delete(self, job_id: str) -> bool:
        """Remove a job and its files; a running job is stopped at its next batch."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return False
            job.deleted = True
            job.cancel.set()
            queued = job_id in self._waiting
            if queued:
                self._waiting.remove(job_id)
                self._release_job(job)
            running = job.status == "running"
        if not running:
            shutil.rmtree(job.folder, ignore_errors=True)
        log.info("job %s deleted", job_id)
        return True

    def _release_job(self, job: Job) -> None:
        with self._lock:
            if job._slot_held:
                job._slot_held = False
                self._slots -= 1

    # ------------------------------------------------------------------
    def evict(self) -> None:
        """Drop finished jobs past their TTL, then the oldest beyond keep_jobs."""
        now = time.time()
        with self._lock:
            done = sorted((j for j in self._jobs.values() if j.status in FINISHED),
                          key=lambda j: j.finished or 0)
            expired = [j for j in done if now - (j.finished or now) > self.settings.job_ttl_s]
            rest = [j for j in done if j not in expired]
            expired += rest[:max(0, len(rest) - self.settings.keep_jobs)]
            for j in expired:
                self._jobs.pop(j.id, None)
        for j in expired:
            shutil.rmtree(j.folder, ignore_errors=True)
            log.info("job %s expired", j.id)

    def _janitor(self) -> None:
        period = max(1.0, min(30.0, self.settings.job_ttl_s / 4))
        while True:
            with self._wake:
                if self._stopping:
                    return
                self._wake.wait(period)
                if self._stopping:
                    return
            self.evict()

    def _worker(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                job = self._jobs.get(self._waiting.popleft())
                if job is None:
                    continue
                job.status, job.stage, job.started = "running", "reading", time.time()
                self._running += 1
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running -= 1
                    self._release_job(job)
                if job.deleted:
                    shutil.rmtree(job.folder, ignore_errors=True)

    def _run(self, job: Job) -> None:
        from hemoseg.inference.pipeline import predict_labels, write_study
        from hemoseg.inference.readers import load_study

        t0 = time.time()

        def progress(n: int) -> None:
            job.slices_done += int(n)
            if job.cancel.is_set():
                raise JobCancelled()

        outcome, error = "failed", None
        try:
            predictor = self.predictor
            study = load_study(job.item)
            job.slices_total = study.shape[0]
            if job.cancel.is_set():
                raise JobCancelled()
            job.stage = "segmenting"
            labels = predict_labels(predictor, study, progress=progress)
            job.slices_done = study.shape[0]
            job.stage = "writing"
            origin = f"upload ({job.kind}, {job.n_files} file(s))"
            write_study(study, labels, list(predictor.class_names), predictor.preprocessing,
                        job.result_dir, origin=origin, model=dict(self.model_info))
            job.viewer_dir.mkdir(exist_ok=True)
            # Raw arrays, shape kept in job.volume: .npy headers are parsed with ast, which is
            # not thread-safe on Python 3.11 and failed under concurrent slice requests.
            np.clip(np.rint(study.pixels), -32768, 32767).astype(VIEWER_ARRAYS["image"][1]).tofile(
                job.viewer_dir / VIEWER_ARRAYS["image"][0])
            labels.astype(VIEWER_ARRAYS["labels"][1]).tofile(job.viewer_dir / VIEWER_ARRAYS["labels"][0])
            job.volume = {"shape_zhw": list(study.shape), "is_hu": bool(study.is_hu),
                          "spacing_mm": list(study.spacing) if study.spacing else None,
                          "source": study.source}
            del study, labels
            outcome = "done"
            dt = time.time() - t0
            self._avg_s = 0.7 * self._avg_s + 0.3 * dt
            log.info("job %s done in %.1f s (%d slices)", job.id, dt, job.slices_total or 0)
        except JobCancelled:
            outcome = "cancelled"
            log.info("job %s cancelled", job.id)
        except HemosegError as exc:
            error = self._scrub(str(exc), job)
            log.info("job %s failed: input refused by the reader", job.id)
        except MemoryError:
            error = "out of memory while processing this study"
            log.warning("job %s failed: out of memory", job.id)
        except Exception as exc:
            error = f"internal error ({type(exc).__name__}); the server log has the job id"
            # the exception text may quote headers or paths: log its type only
            log.error("job %s failed: internal error %s", job.id, type(exc).__name__)
            if os.environ.get("HEMOSEG_DEBUG"):
                log.exception("job %s traceback", job.id)
        finally:
            # clean up first, so a client that sees the final status sees the final files
            job.item = None
            shutil.rmtree(job.upload_dir, ignore_errors=True)
            job.error = error
            job.finished = time.time()
            job.status = job.stage = outcome

    @staticmethod
    def _scrub(message: str, job: Job) -> str:
        """Reader messages name files by absolute path; show them relative to the upload."""
        for base in (str(job.upload_dir.resolve()), str(job.upload_dir)):
            message = message.replace(base + os.sep, "").replace(base, "upload")
        return " ".join(message.split())
