"""Shared plumbing for the benchmarks: child processes that are always cleaned up, bounded
waits with a progress line, submitter threads and the summary of one system's run.

Every child process is started in its own process group (and, on Linux, asked to die with
the benchmark), registered here, and stopped by ``stop_all_processes`` — call it in a
``finally`` — which also removes the temp dirs made by ``make_temp_dir``. Nothing here talks to anything but 127.0.0.1.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent   # flask, gunicorn, rq and celery come from the same venv

_children: list[subprocess.Popen] = []
_temp_dirs: list[Path] = []
_PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """A system under test did not come up or did not finish in time."""


def venv_tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        raise BenchError(f"{name} not found next to {sys.executable}; activate the project venv")
    return str(path)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def start_process(cmd: list[str], *, env: dict[str, str], log_path: Path, cwd: Path = REPO_ROOT) -> subprocess.Popen:
    """Start ``cmd`` in a new process group with stdout+stderr going to ``log_path``."""
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    finally:
        log.close()
    _children.append(proc)
    return proc


def run_command(cmd: list[str], *, env: dict[str, str], log_path: Path, timeout: float = 120) -> None:
    """Run a set-up command to completion (bounded); raise with its log's tail on failure."""
    proc = start_process(cmd, env=env, log_path=log_path)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise BenchError(f"{' '.join(cmd)} did not finish in {timeout:.0f}s") from None
    if code != 0:
        raise BenchError(f"{' '.join(cmd)} exited {code}:\n{tail(log_path)}")


def stop_process(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL the group."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if proc.poll() is None and pgid is not None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if pgid is not None:  # gunicorn workers or other stragglers left in the group
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    if proc in _children:
        _children.remove(proc)


def stop_all_processes() -> None:
    """Stop every child still running and remove every temp dir still registered."""
    for proc in list(reversed(_children)):
        stop_process(proc, grace=5.0)
    for path in list(_temp_dirs):
        remove_temp_dir(path)


def make_temp_dir(prefix: str, keep: bool = False) -> Path:
    """A temp dir that ``stop_all_processes`` removes (unless ``keep``)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if not keep:
        _temp_dirs.append(path)
    return path


def remove_temp_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path in _temp_dirs:
        _temp_dirs.remove(path)


def interrupt_on_signals() -> None:
    """Ctrl-C or a ``kill`` unwinds the benchmark with KeyboardInterrupt, so every ``finally``
    runs; further SIGINT/SIGTERM are then ignored so they cannot cut the clean-up short
    (it is bounded: a few seconds per process)."""
    def handler(_signum, _frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_cpu_seconds(proc: subprocess.Popen) -> float:
    """User+system CPU seconds used so far by the live processes in ``proc``'s process group
    (gunicorn's master and workers, say), read from /proc; 0.0 where /proc is missing."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return 0.0
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:            # field 5, pgrp (fields[0] is field 3, state)
            total += int(fields[11]) + int(fields[12])   # fields 14 and 15, utime and stime
    return total / _CLOCK_TICKS


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- waiting ---------------------------------------------------------------------------------

class Progress:
    """One status line, rewritten in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, label: str):
        self.label = label
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self._last_print = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        line = f"  {self.label}: {text} ({now - self.started:5.1f}s)"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(100)[:100])
            sys.stderr.flush()
        elif force or now - self._last_print >= 5.0:
            sys.stderr.write(line + "\n")
            self._last_print = now

    def done(self, text: str) -> None:
        self.show(text, force=True)
        if self.tty:
            sys.stderr.write("\n")


def wait_for(check: Callable[[], tuple[bool, str]], *, label: str, timeout: float, interval: float = 0.25) -> str:
    """Call ``check`` until it returns (True, text) or ``timeout`` passes (BenchError)."""
    progress = Progress(label)
    deadline = time.monotonic() + timeout
    while True:
        finished, text = check()
        if finished:
            progress.done(text)
            return text
        progress.show(text)
        if time.monotonic() > deadline:
            progress.done(text + " -- timed out")
            raise BenchError(f"{label}: not finished after {timeout:.0f}s ({text})")
        time.sleep(interval)


class SubmitThreads:
    """``clients`` threads call ``submit_one(i)`` for i in range(n) between them; each call's
    return value is kept (in index order). A failing call is counted, not retried."""

    def __init__(self, n: int, clients: int, submit_one: Callable[[int], object]):
        self.n, self.submit_one = n, submit_one
        self.results: list[object] = [None] * n
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._next = 0
        self._lock = threading.Lock()
        self.first_submit_at: float | None = None
        self.last_submit_at: float | None = None
        self.threads = [threading.Thread(target=self._work, daemon=True, name=f"submit-{i}")
                        for i in range(max(1, clients))]

    def start(self) -> "SubmitThreads":
        self.first_submit_at = time.time()
        for t in self.threads:
            t.start()
        return self

    def _work(self) -> None:
        while not self.stop.is_set():
            with self._lock:
                i = self._next
                if i >= self.n:
                    return
                self._next += 1
            try:
                self.results[i] = self.submit_one(i)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            finally:
                self.last_submit_at = time.time()

    @property
    def submitted(self) -> int:
        return self._next

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def halt(self, timeout: float = 10.0) -> None:
        """Stop handing out work and wait (bounded) for calls in flight; for ``finally``."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self.running:
            self.stop.set()
            raise BenchError(f"submitting did not finish in {timeout:.0f}s")


# --- results ---------------------------------------------------------------------------------

class CpuMeter:
    """CPU seconds spent between start and ``read()``: by the worker process groups, by this
    process (the submitting client threads and the progress polling) and by Redis if given."""

    def __init__(self, workers: list[subprocess.Popen], redis_conn=None):
        self.workers, self.redis = workers, redis_conn
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        values = {"workers": sum(group_cpu_seconds(p) for p in self.workers), "client": time.process_time()}
        if self.redis is not None:
            info = self.redis.info("cpu")
            values["redis"] = info["used_cpu_sys"] + info["used_cpu_user"]
        return values

    def read(self) -> dict[str, float]:
        now = self._now()
        return {k: now[k] - self.start[k] for k in now}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def utc_epoch(value: str | datetime | None) -> float | None:
    """Epoch seconds from an ISO 8601 string or a datetime (naive ones are taken as UTC)."""
    if value is None:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def summarize(system: str, *, requested: int, first_submit: float, last_submit: float | None,
              finished_at: list[float], latencies: list[float], failed: int = 0,
              submit_errors: list[str] = (), cpu_seconds: dict | None = None,
              notes: dict | None = None) -> dict:
    """One system's row: jobs/s over first submit -> last finish, and start latencies in ms."""
    done = len(finished_at)
    elapsed = (max(finished_at) - first_submit) if finished_at else None
    submit_seconds = (last_submit - first_submit) if last_submit else None
    return {
        "system": system, "jobs": requested, "succeeded": done, "failed": failed,
        "submit_errors": len(submit_errors), "submit_error_samples": list(submit_errors)[:5],
        "elapsed_s": round(elapsed, 3) if elapsed else None,
        "jobs_per_s": round(done / elapsed, 1) if elapsed else None,
        "submit_s": round(submit_seconds, 3) if submit_seconds else None,
        "submits_per_s": round(requested / submit_seconds, 1) if submit_seconds else None,
        "start_latency_ms": {
            "p50": _ms(percentile(latencies, 50)), "p90": _ms(percentile(latencies, 90)),
            "p99": _ms(percentile(latencies, 99)), "max": _ms(max(latencies) if latencies else None),
        },
        "cpu_s": {k: round(v, 2) for k, v in (cpu_seconds or {}).items()},
        "worker_cpu_ms_per_job": round(1000 * cpu_seconds["workers"] / done, 2)
        if cpu_seconds and done and cpu_seconds.get("workers") else None,
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "notes": notes or {},
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def run_files(name: str, out: Path | None = None) -> tuple[Path, Path]:
    """(results JSON path, logs folder, made here) for one run of the benchmark ``name``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = out or BENCH_DIR / "results" / f"{name}-{stamp}.json"
    log_dir = out.with_suffix("").with_name(out.stem + "-logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    return out, log_dir


def reproduce_command(script: str, argv: list[str]) -> str:
    """The shell command that runs ``bench/<script>`` again with the same arguments."""
    import shlex
    return f"cd {shlex.quote(str(REPO_ROOT))} && .venv/bin/python bench/{script} {shlex.join(argv)}".rstrip()


def package_version(name: str) -> str | None:
    """An installed distribution's version, or None (for the machine info a run records)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None
