"""Server limits in one place, so the CLI, the app and the tests agree on them.

Every limit exists to keep one workstation responsive when several people (or
one runaway script) upload at once: memory and disk stay bounded no matter
what arrives, and anything over a limit is refused early with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024


@dataclass
class ServerSettings:
    max_upload_bytes: int = 512 * MB
    """Largest request body accepted (the zip, or all files together)."""
    max_concurrent: int = 1
    """Studies segmented at the same time (each uses all CPU threads)."""
    max_queue: int = 4
    """Accepted studies that may wait for a free worker; beyond, 429."""
    max_unpacked_bytes: int | None = None
    """Total size after unzipping / gunzipping; default 4 x max_upload_bytes."""
    max_zip_entries: int = 10000
    max_compression_ratio: float = 100.0
    """Refuse zip entries (and whole archives) that expand more than this; real
    DICOM deflates ~2-10x, zip bombs by 1000x and more."""
    max_image_side: int = 8192
    """PNG/JPEG slices larger than this (pixels per side) are refused before
    decoding: a tiny PNG can otherwise decode to gigabytes."""
    max_files: int = 5000
    """Files per multipart upload."""
    keep_jobs: int = 20
    """Finished jobs whose results are kept; the oldest go first."""
    job_ttl_s: float = 3600.0
    """Finished jobs are deleted this long after they finish."""
    min_free_disk_bytes: int | None = None
    """Refuse uploads (503) when the work folder has less free space than this;
    default max_upload_bytes."""

    def __post_init__(self):
        if self.max_upload_bytes < 1:
            raise ValueError("max_upload_bytes must be positive")
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if self.max_unpacked_bytes is None:
            self.max_unpacked_bytes = 4 * self.max_upload_bytes
        if self.min_free_disk_bytes is None:
            self.min_free_disk_bytes = self.max_upload_bytes

    @property
    def capacity(self) -> int:
        """Jobs the server holds at once (running + waiting + being uploaded)."""
        return self.max_concurrent + self.max_queue

    def public(self) -> dict:
        return {"max_upload_bytes": self.max_upload_bytes,
                "max_unpacked_bytes": self.max_unpacked_bytes,
                "max_concurrent": self.max_concurrent, "max_queue": self.max_queue,
                "max_zip_entries": self.max_zip_entries, "max_files": self.max_files,
                "keep_jobs": self.keep_jobs, "job_ttl_s": self.job_ttl_s}


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    return f"{n:.1f} GB"
