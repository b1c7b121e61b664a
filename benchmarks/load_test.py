"""Load test for `hemoseg serve`: concurrent uploads against a real server.

Starts `hemoseg serve` as a subprocess on 127.0.0.1 (a free port), fires
--uploads simultaneous uploads of a synthetic DICOM study, repeated for
--waves waves, and reports:

* HTTP status counts (202 accepted, 429 queue full, 503, other),
* upload latency p50/p95 and, for accepted jobs, time to result p50/p95,
* server RSS before, peak and after each wave (memory must stay bounded:
  uploads stream to disk, and the queue is bounded),
* whether /health kept answering during the load (and its worst latency).

Without --run it uses a freshly initialised tiny model, which measures the
server, not the network. Loopback only; every request has a timeout.

    python benchmarks/load_test.py [--uploads 20] [--max-concurrent 2] [--max-queue 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from hemoseg.server.testing import free_port, make_tiny_run, synthetic_dicom_folder, zip_folder


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


class Prober(threading.Thread):
    """Polls /health and samples server RSS while the load runs."""

    def __init__(self, url: str, pid: int):
        super().__init__(daemon=True)
        self.url, self.pid = url, pid
        self.stop = threading.Event()
        self.ok = self.failed = 0
        self.worst_s = 0.0
        self.peak_rss = 0.0

    def run(self):
        with httpx.Client(timeout=5) as c:
            while not self.stop.is_set():
                t = time.perf_counter()
                try:
                    good = c.get(self.url + "/health").status_code == 200
                except httpx.HTTPError:
                    good = False
                self.worst_s = max(self.worst_s, time.perf_counter() - t)
                self.ok += good
                self.failed += not good
                self.peak_rss = max(self.peak_rss, rss_mb(self.pid))
                self.stop.wait(0.1)


def one_upload(url: str, data: bytes, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        with httpx.Client(base_url=url, timeout=timeout) as c:
            r = c.post("/api/jobs", files=[("files", ("study.zip", data, "application/zip"))])
            out = {"status": r.status_code, "upload_s": time.perf_counter() - t0}
            if r.status_code != 202:
                out["retry_after"] = r.headers.get("retry-after")
                return out
            job = r.json()["id"]
            deadline = time.time() + timeout
            while time.time() < deadline:
                st = c.get(f"/api/jobs/{job}").json()
                if st["status"] not in ("queued", "running"):
                    out.update(job_status=st["status"], total_s=time.perf_counter() - t0)
                    c.delete(f"/api/jobs/{job}")
                    return out
                time.sleep(0.2)
            out["job_status"] = "timeout"
            return out
    except httpx.HTTPError as exc:
        return {"status": f"error:{type(exc).__name__}", "upload_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="run folder (default: a tiny untrained model)")
    ap.add_argument("--uploads", type=int, default=20)
    ap.add_argument("--waves", type=int, default=2)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--max-queue", type=int, default=4)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--settle", type=float, default=0.0, metavar="S",
                    help="wait S seconds after /health first answers before the first wave (a person "
                         "opening the viewer takes that long to pick a study; the server warms up meanwhile)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (server log)")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="hemoseg-load-"))
    run = Path(args.run) if args.run else make_tiny_run(tmp / "run")
    data = zip_folder(synthetic_dicom_folder(tmp / "synth", slices=args.slices, size=args.size))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "hemoseg", "serve", str(run), "--host", "127.0.0.1",
           "--port", str(port), "--max-concurrent", str(args.max_concurrent),
           "--max-queue", str(args.max_queue), "--work-dir", str(tmp / "work")]
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    result = {"uploads_per_wave": args.uploads, "waves": [], "study_zip_bytes": len(data),
              "max_concurrent": args.max_concurrent, "max_queue": args.max_queue,
              "cpu_count": os.cpu_count()}
    try:
        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                print((tmp / "server.log").read_text(), file=sys.stderr)
                raise SystemExit("server did not start")
            time.sleep(0.2)
        time.sleep(args.settle)
        result["rss_start_mb"] = rss_mb(proc.pid)
        print(f"server pid {proc.pid} on {url}; study zip {len(data) / 1e6:.2f} MB "
              f"({args.slices} slices {args.size}x{args.size}); RSS {result['rss_start_mb']:.0f} MB")
        for w in range(args.waves):
            before = rss_mb(proc.pid)
            prober = Prober(url, proc.pid)
            prober.start()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.uploads) as pool:
                rows = list(pool.map(lambda _: one_upload(url, data, args.timeout), range(args.uploads)))
            wall = time.perf_counter() - t0
            prober.stop.set()
            prober.join()
            time.sleep(0.5)
            codes = [r["status"] for r in rows]
            wave = {
                "wave": w + 1, "wall_s": round(wall, 2),
                "count_202": codes.count(202), "count_429": codes.count(429),
                "count_503": codes.count(503),
                "other": [c for c in codes if c not in (202, 429, 503)],
                "jobs_done": sum(r.get("job_status") == "done" for r in rows),
                "upload_p50_s": round(pct([r["upload_s"] for r in rows], 50), 3),
                "upload_p95_s": round(pct([r["upload_s"] for r in rows], 95), 3),
                "result_p50_s": round(pct([r["total_s"] for r in rows if "total_s" in r], 50), 2),
                "result_p95_s": round(pct([r["total_s"] for r in rows if "total_s" in r], 95), 2),
                "retry_after_s": sorted({r["retry_after"] for r in rows if r.get("retry_after")}),
                "health_ok": prober.ok, "health_failed": prober.failed,
                "health_worst_s": round(prober.worst_s, 3),
                "rss_before_mb": round(before, 1), "rss_peak_mb": round(prober.peak_rss, 1),
                "rss_after_mb": round(rss_mb(proc.pid), 1),
            }
            result["waves"].append(wave)
            print(f"wave {w + 1}: {args.uploads} uploads in {wall:.1f} s -> 202: {wave['count_202']}, "
                  f"429: {wave['count_429']}, 503: {wave['count_503']}, other: {wave['other']}; "
                  f"done {wave['jobs_done']}")
            print(f"  upload latency p50 {wave['upload_p50_s']} s, p95 {wave['upload_p95_s']} s; "
                  f"time to result p50 {wave['result_p50_s']} s, p95 {wave['result_p95_s']} s; "
                  f"Retry-After {wave['retry_after_s']}")
            print(f"  /health during load: {prober.ok} ok, {prober.failed} failed, worst "
                  f"{wave['health_worst_s']} s; RSS before {before:.0f} MB, peak "
                  f"{prober.peak_rss:.0f} MB, after {wave['rss_after_mb']:.0f} MB")
        result["rss_hwm_mb"] = rss_mb(proc.pid, "VmHWM")
        print(f"server peak RSS (VmHWM) {result['rss_hwm_mb']:.0f} MB")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if args.keep:
            print(f"kept {tmp} (server.log)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    bad = any(w["other"] or w["health_failed"] for w in result["waves"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
