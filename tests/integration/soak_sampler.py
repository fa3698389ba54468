"""The soak's process sampler: RSS (/proc/<pid>/status), PSS (/proc/<pid>/smaps_rollup),
threads, CPU time and open descriptors (/proc/<pid>/fd, HTTP connections apart) of the gunicorn
master and each worker, once a second; and the growth computed from those samples (first window
after warm-up vs last window, per process).
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any

from gunicorn_harness import IlgunServer, child_pids

# --- sampling the processes -------------------------------------------------------------------

def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(rest.split()[0])
    return out


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().decode(errors="replace").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _socket_ports() -> dict[str, tuple[int, int]]:
    """socket inode -> (local port, remote port), for TCP sockets over IPv4 and IPv6."""
    out = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) > 9:
                        local = int(parts[1].rsplit(":", 1)[1], 16)
                        remote = int(parts[2].rsplit(":", 1)[1], 16)
                        out[parts[9]] = (local, remote)
        except OSError:
            continue
    return out


def _fds(pid: int, ilgun_port: int, ports: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Open descriptors by type: http (the listening socket and client connections), and the
    rest: file, socket (outgoing TCP, unix), pipe, other."""
    counts = {"total": 0, "http": 0, "file": 0, "socket": 0, "pipe": 0, "other": 0}
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{fd}")
        except OSError:
            continue
        counts["total"] += 1
        if target.startswith("socket:["):
            local, _ = ports.get(target[8:-1], (None, None))
            counts["http" if local == ilgun_port else "socket"] += 1
        elif target.startswith("pipe:"):
            counts["pipe"] += 1
        elif target.startswith("/"):
            counts["file"] += 1
        else:
            counts["other"] += 1
    counts["non_http"] = counts["total"] - counts["http"]
    return counts


class Sampler(threading.Thread):
    def __init__(self, server: IlgunServer, t0: float, interval: float = 1.0):
        super().__init__(name="soak-sampler", daemon=True)
        self.server, self.t0, self.interval = server, t0, interval
        self.stop_event = threading.Event()
        self.samples: list[dict] = []
        self.workers_seen: list[int] = []
        self.worker_changes: list[str] = []
        self.sample_cost: list[float] = []

    def sample_once(self) -> None:
        started = time.monotonic()
        master = self.server.pid
        workers = sorted(child_pids(master))
        if self.workers_seen and workers != self.workers_seen:
            self.worker_changes.append(f"{started - self.t0:.1f}s: workers {self.workers_seen} -> {workers}")
        self.workers_seen = workers
        ports = _socket_ports()
        for role, pid in [("master", master)] + [("worker", w) for w in workers]:
            try:
                st = _status_kb(pid)
                fds = _fds(pid, self.server.port, ports)
                cpu = _cpu_seconds(pid)
            except (OSError, ValueError):
                continue  # it just exited; the change shows in the next sample's worker list
            self.samples.append({"t": round(started - self.t0, 2), "pid": pid, "role": role,
                                 "rss_kb": st.get("VmRSS"), "pss_kb": _pss_kb(pid),
                                 "threads": st.get("Threads"), "cpu_s": round(cpu, 2), "fds": fds})
        self.sample_cost.append(time.monotonic() - started)

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            try:
                self.sample_once()
            except Exception as exc:  # noqa: BLE001 - a missing sample is not worth a crash
                self.worker_changes.append(f"sampler error: {exc!r}")
            next_at += self.interval
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))

    def latest(self) -> dict[int, dict]:
        out = {}
        for s in reversed(self.samples):
            out.setdefault(s["pid"], s)
            if len(out) >= 4:
                break
        return out


# --- growth from the samples ------------------------------------------------------------------

def _slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t seconds, value) points, per minute."""
    if len(points) < 3:
        return None
    ts = [p[0] for p in points]
    vs = [p[1] for p in points]
    mt, mv = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - mt) ** 2 for t in ts)
    if not den:
        return None
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / den


def analyse_memory(samples: list[dict], warmup: float, end: float, window: float) -> dict[str, dict]:
    """Per process (key role:pid): first window after warm-up vs last window, RSS/PSS growth in
    percent, descriptor medians and the RSS slope after warm-up."""
    by_pid: dict[int, list[dict]] = {}
    for s in samples:
        by_pid.setdefault(s["pid"], []).append(s)
    out = {}
    for pid, rows in by_pid.items():
        role = rows[0]["role"]
        after = [r for r in rows if warmup <= r["t"] <= end]
        first = [r for r in after if r["t"] < warmup + window]
        last = [r for r in after if r["t"] >= end - window]
        entry: dict[str, Any] = {"pid": pid, "role": role, "samples": len(rows),
                                 "present_whole_run": bool(first) and bool(last)}
        if first and last:
            def med(rs, getter):
                vals = [getter(r) for r in rs if getter(r) is not None]
                return statistics.median(vals) if vals else None

            rss0, rss1 = med(first, lambda r: r["rss_kb"]), med(last, lambda r: r["rss_kb"])
            pss0, pss1 = med(first, lambda r: r["pss_kb"]), med(last, lambda r: r["pss_kb"])
            entry.update({
                "rss_mb_start": round(rss0 / 1024, 1), "rss_mb_end": round(rss1 / 1024, 1),
                "rss_growth_pct": round(100 * (rss1 / rss0 - 1), 2),
                "pss_mb_start": round(pss0 / 1024, 1) if pss0 else None,
                "pss_mb_end": round(pss1 / 1024, 1) if pss1 else None,
                "pss_growth_pct": round(100 * (pss1 / pss0 - 1), 2) if pss0 and pss1 else None,
                "rss_mb_max": round(max(r["rss_kb"] for r in rows) / 1024, 1),
                "rss_slope_mb_per_min": (lambda s: round(s / 1024, 3) if s is not None else None)(
                    _slope_per_min([(r["t"], r["rss_kb"]) for r in after])),
                "threads_start": med(first, lambda r: r["threads"]), "threads_end": med(last, lambda r: r["threads"]),
            })
            for key in ("total", "non_http", "http", "file", "socket", "pipe", "other"):
                entry[f"fd_{key}_start"] = med(first, lambda r: r["fds"][key])
                entry[f"fd_{key}_end"] = med(last, lambda r: r["fds"][key])
            entry["fd_non_http_max_after_warmup"] = max(r["fds"]["non_http"] for r in after)
            span = after[-1]["t"] - after[0]["t"]
            entry["cpu_s_after_warmup"] = round(after[-1]["cpu_s"] - after[0]["cpu_s"], 2)
            entry["cpu_pct_of_core_after_warmup"] = round(100 * entry["cpu_s_after_warmup"] / span, 1) if span else None
            entry["fd_total_max"] = max(r["fds"]["total"] for r in rows)
        out[f"{role}:{pid}"] = entry
    return out
