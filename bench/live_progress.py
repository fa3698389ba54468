"""Live-progress benchmark: polling the JSON API with ETag / If-None-Match against Server-Sent
Events on gunicorn gthread, on this machine, in one run.

    .venv/bin/python bench/live_progress.py          # about 2.5 minutes; --help for the loads and lengths

1. Polling: a fresh ilgun (ILGUN_PROFILE=medium, bench/ilgun_runner.py) runs one admin ``sleep``
   job whose progress changes every ``--change-every`` s. N watchers (one keep-alive session each,
   as a browser tab) fetch the job once (the page load) and then poll
   ``GET /api/v1/jobs/<id>`` every ``--interval`` s with If-None-Match for ``--seconds`` s.
   Figures: 304 share, server CPU per poll (the gunicorn group's CPU above the no-watcher phase's,
   divided by the polls), response bytes per poll (status line, headers and body), poll latency.
2. SSE: bench/sse_app.py under the floor's gunicorn settings with the same workers x threads
   (bench/sse_runner.py); K clients hold ``GET /events`` streams open for the phase.
3. In every phase a probe thread sends an unrelated request every 100 ms (``GET /healthz`` to
   ilgun, ``GET /ping`` to the SSE app), on schedule even while earlier ones wait, each on a new
   connection as a new visitor's (a keep-alive one would stay on one worker), timeout 5 s; a
   timed-out probe counts as 5 s. Its p50/p99 are compared with the phase without watchers or
   streams (ratios: the machine is shared).

Only 127.0.0.1 is contacted. Prints one table, a conclusion derived from it and the command that
reproduces it; writes bench/results/live-progress-<timestamp>.json (logs next to it).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench_support import (CpuMeter, interrupt_on_signals, package_version, percentile, reproduce_command,
                           run_files, stop_all_processes, wait_for)
from floor_runner import FloorOptions
from ilgun_runner import IlgunHosts, IlgunOptions
from sse_runner import OpenStreams, SseServer, wait_until_drained

PROBE_EVERY = 0.1        # seconds between probe requests
PROBE_TIMEOUT = 5.0      # a probe slower than this counts as PROBE_TIMEOUT
SLOW = 1.0               # a probe over a second is a stall a user notices
STALL_SHARE = 2.0        # % of probes over SLOW that makes a phase "stalled" (one slow probe may be noise)
STREAM_OPEN_WAIT = 3.0   # seconds to wait for every stream's first event


def response_bytes(r: requests.Response) -> int:
    """Bytes of the response on the wire: status line, headers and body (no compression here)."""
    head = len(f"HTTP/1.1 {r.status_code} {r.reason}\r\n") + 2
    return head + sum(len(k) + len(v) + 4 for k, v in r.raw.headers.items()) + len(r.content)


def _ms_pair(values: list[float]) -> tuple[float | None, float | None]:
    return (None, None) if not values else (round(1000 * percentile(values, 50), 1),
                                            round(1000 * percentile(values, 99), 1))


class Probe(threading.Thread):
    """Sends ``GET url`` every PROBE_EVERY s on a new connection, whether or not the earlier ones
    have answered (a stalled server must not also slow the sampling down)."""

    def __init__(self, url: str):
        super().__init__(daemon=True, name="probe")
        self.url, self.stop, self.futures = url, threading.Event(), []
        self.pool = ThreadPoolExecutor(max_workers=int(PROBE_TIMEOUT / PROBE_EVERY) + 10)

    def _one(self) -> float:
        started = time.perf_counter()
        try:
            ok = requests.get(self.url, timeout=PROBE_TIMEOUT).status_code == 200
        except requests.RequestException:
            ok = False
        return time.perf_counter() - started if ok else PROBE_TIMEOUT

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.futures.append(self.pool.submit(self._one))
            next_at += PROBE_EVERY
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def finish(self) -> dict:
        """Stop sending, wait for the answers (at most PROBE_TIMEOUT) and summarize them."""
        self.stop.set()
        self.join()
        self.pool.shutdown(wait=True)
        lat = [f.result() for f in self.futures]
        p50, p99 = _ms_pair(lat)
        return {"n": len(lat), "p50_ms": p50, "p99_ms": p99, "timeouts": sum(x >= PROBE_TIMEOUT for x in lat),
                "slow_pct": round(100 * sum(x > SLOW for x in lat) / len(lat), 1)}


class Watcher(threading.Thread):
    """A page showing one job: a first full GET, then a conditional GET every ``interval`` s."""

    def __init__(self, url: str, token: str, interval: float):
        super().__init__(daemon=True, name="watcher")
        self.url, self.interval = url, interval
        self.start_at = self.until = 0.0   # set by the phase before start()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.etag = self.session.get(url, timeout=PROBE_TIMEOUT).headers.get("ETag")   # the page load
        self.polls: list[tuple[int, float, int]] = []   # (status or 0 for an error, seconds, bytes)

    def run(self) -> None:
        next_at = self.start_at
        while next_at < self.until:
            time.sleep(max(0.0, next_at - time.monotonic()))
            started = time.perf_counter()
            try:
                r = self.session.get(self.url, timeout=PROBE_TIMEOUT,
                                     headers={"If-None-Match": self.etag} if self.etag else {})
                self.polls.append((r.status_code, time.perf_counter() - started, response_bytes(r)))
                if r.status_code == 200:
                    self.etag = r.headers.get("ETag")
            except requests.RequestException:
                self.polls.append((0, time.perf_counter() - started, 0))
            next_at += self.interval
        self.session.close()


def run_polling(args, log_dir) -> list[dict]:
    hosts = IlgunHosts(IlgunOptions(jobs=1, clients=1, timeout=120, log_dir=log_dir, profile="medium"),
                       "live-progress", database_url="")
    phases = [0] + args.watchers
    duration = len(phases) * (args.seconds + 4) + 30   # outlives every phase
    rows, job_id = [], None
    try:
        hosts.start()
        params = {"duration": duration, "steps": max(1, round(duration / args.change_every))}
        job_id = hosts.api("POST", "/api/v1/jobs", json={"kind": "sleep", "params": params})["id"]
        wait_for(lambda: ((s := hosts.api("GET", f"/api/v1/jobs/{job_id}")["status"]) == "running", s),
                 label="live-progress: sleep job starting", timeout=30)
        idle_cpu_per_s = 0.0
        for n in phases:
            print(f"polling: {n} watchers for {args.seconds:g} s", file=sys.stderr, flush=True)
            watchers = [Watcher(f"{hosts.base}/api/v1/jobs/{job_id}", hosts.token, args.interval) for _ in range(n)]
            start_at = time.monotonic() + 0.2
            until = start_at + args.seconds
            for w in watchers:   # spread over one interval, as tabs opened at different moments
                w.start_at, w.until = start_at + random.uniform(0, args.interval), until
            time.sleep(max(0.0, start_at - time.monotonic()))
            meter, probe = CpuMeter(hosts.procs), Probe(hosts.base + "/healthz")
            began = time.monotonic()
            probe.start()
            for w in watchers:
                w.start()
            time.sleep(max(0.0, until - time.monotonic()))
            for w in watchers:
                w.join(PROBE_TIMEOUT + 5)   # a poll sent just before ``until`` still counts
            cpu, wall = meter.read(), time.monotonic() - began   # before the probe's stragglers
            probe_figures = probe.finish()
            polls = [p for w in watchers for p in w.polls]
            row = {"option": "polling", "load": n, "wall_s": round(wall, 2), "cpu_s": cpu, "probe": probe_figures}
            if n == 0:
                idle_cpu_per_s = cpu["workers"] / wall
            else:
                count = max(1, len(polls))   # a phase shorter than one interval has no polls
                by_status = {s: sum(1 for p in polls if p[0] == s) for s in (200, 304, 0)}
                row.update({"polls": count, "pct_304": round(100 * by_status[304] / count, 1),
                            "pct_200": round(100 * by_status[200] / count, 1), "errors": by_status[0],
                            "cpu_ms_per_poll": round(1000 * (cpu["workers"] - idle_cpu_per_s * wall) / count, 2),
                            "cpu_ms_per_poll_gross": round(1000 * cpu["workers"] / count, 2),
                            "bytes_per_poll": round(sum(p[2] for p in polls) / count),
                            "poll_ms": _ms_pair([p[1] for p in polls if p[0]])})
                for status in (200, 304):
                    sizes = [p[2] for p in polls if p[0] == status]
                    row[f"bytes_{status}"] = round(sum(sizes) / len(sizes)) if sizes else None
            rows.append(row)
        return rows
    finally:
        if job_id is not None and hosts.token:
            try:   # a running job would hold gunicorn's graceful stop
                hosts.api("POST", f"/api/v1/jobs/{job_id}/cancel")
            except Exception:  # noqa: BLE001 - stopping the server ends it anyway
                pass
        hosts.stop()


def run_sse(args, log_dir) -> tuple[list[dict], int]:
    server = SseServer(FloorOptions(jobs=0, clients=1, timeout=60, log_dir=log_dir, profile="medium"), "sse-gthread")
    rows = []
    try:
        server.start()
        capacity = server.profile.workers * server.profile.threads
        for k in args.streams:
            print(f"sse: {k} open streams for {args.seconds:g} s", file=sys.stderr, flush=True)
            streams = OpenStreams(server.base + "/events", k, int(args.seconds) + 10, STREAM_OPEN_WAIT)
            probe = Probe(server.base + "/ping")
            probe.start()
            time.sleep(args.seconds)
            probe_figures = probe.finish()
            rows.append({"option": "sse", "load": k, "streams_open": len(streams.opened),
                         "streams_per_worker": streams.per_worker(), "stream_errors": streams.close(),
                         "probe": probe_figures})
            wait_until_drained(server.base + "/ping", in_a_row=2 * capacity)
        return rows, capacity
    finally:
        server.stop()


def add_ratios(rows: list[dict]) -> None:
    idle = rows[0]["probe"]
    for row in rows:
        for q in ("p50", "p99"):
            row["probe"][f"{q}_vs_idle"] = round(row["probe"][f"{q}_ms"] / max(idle[f"{q}_ms"], 0.1), 2)


def conclusion(polling: list[dict], sse: list[dict], capacity: int) -> str:
    """Which option wins, from the figures: a stall is STALL_SHARE % or more of probes over 1 s."""
    stalled = [r for r in sse if r["probe"]["slow_pct"] >= STALL_SHARE]
    worst_poll = max(polling, key=lambda r: r["probe"]["slow_pct"])["probe"]["slow_pct"]
    top = polling[-1]
    poll_text = (f"{top['load']} pollers kept the probe's p99 at {top['probe']['p99_vs_idle']:.2f}x idle "
                 f"({worst_poll:g}% of probes over 1 s at worst) for {top['cpu_ms_per_poll']:.2f} ms of server CPU "
                 f"and {top['bytes_per_poll']} B per poll ({top['pct_304']:g}% answered 304)")
    if stalled:
        first = stalled[0]
        sse_text = (f"{first['load']} SSE streams ({first['streams_open']} open, against {capacity} request threads) "
                    f"sent {first['probe']['slow_pct']:g}% of /ping over 1 s, p99 {first['probe']['p99_ms']:.0f} ms "
                    f"= {first['probe']['p99_vs_idle']:.0f}x idle")
    else:
        sse_text = f"{sse[-1]['load']} SSE streams kept /ping's p99 at {sse[-1]['probe']['p99_vs_idle']:.2f}x idle"
    if stalled and worst_poll < STALL_SHARE:
        return (f"polling wins: {poll_text}; {sse_text}. Each open stream holds a gthread request thread for its "
                f"whole life, and a worker with none free still accepts and queues requests behind them.")
    if stalled:
        better = "polling" if worst_poll < stalled[0]["probe"]["slow_pct"] else "SSE"
        return f"both stalled; {better} less so: {poll_text}; {sse_text}."
    if max(r["load"] for r in sse) < capacity:
        return f"inconclusive: SSE was not measured at {capacity}+ streams (the request threads); {sse_text}."
    if worst_poll >= STALL_SHARE:
        return f"SSE wins: {sse_text}, at or beyond the {capacity} request threads; {poll_text}."
    return f"no stall on either side: {sse_text}; {poll_text}. SSE holds up here; prefer it."


def _pair(values) -> str:
    return "–" if values is None or values[0] is None else f"{values[0]:.1f} / {values[1]:.1f}"


def format_table(polling: list[dict], sse: list[dict]) -> str:
    lines = [f"{'option':16} {'load':>12} {'304/200 %':>9} {'CPU ms/poll':>11} {'B/poll':>6} {'poll p50/p99 ms':>15} "
             f"{'probe p50/p99 ms':>17} {'vs idle p50/p99':>15} {'probe >1 s':>10}"]
    for r in polling + sse:
        p = r["probe"]
        load = f"N={r['load']}" if r["option"] == "polling" else f"K={r['load']}, {r['streams_open']} open"
        cells = ("–", "–", "–", "–") if "polls" not in r else (
            f"{r['pct_304']:g}/{r['pct_200']:g}", f"{r['cpu_ms_per_poll']:.2f}", str(r["bytes_per_poll"]),
            _pair(r["poll_ms"]))
        name = "polling + ETag" if r["option"] == "polling" else "SSE on gthread"
        ratios = f"{p['p50_vs_idle']:.2f} / {p['p99_vs_idle']:.2f}x"
        lines.append(f"{name:16} {load:>12} {cells[0]:>9} {cells[1]:>11} {cells[2]:>6} {cells[3]:>15} "
                     f"{_pair((p['p50_ms'], p['p99_ms'])):>17} {ratios:>15} {p['slow_pct']:>9g}%")
    return "\n".join(lines)


def _loads(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--watchers", type=_loads, default=[1, 6, 20, 50], help="N pollers per phase (0 is always run)")
    p.add_argument("--streams", type=_loads, default=[0, 3, 6, 8], help="K open SSE streams per phase")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between one watcher's polls")
    p.add_argument("--change-every", type=float, default=1.0, help="seconds between the job's progress changes")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    args.watchers = [n for n in args.watchers if n > 0]
    if not args.watchers:
        p.error("--watchers needs at least one N > 0")
    args.streams = sorted(set(args.streams) | {0})   # K=0 is the baseline the ratios divide by
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    interrupt_on_signals()
    out, log_dir = run_files("live-progress", args.out)
    summary = {"command": reproduce_command("live_progress.py", argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "args": {k: (str(v) if k == "out" else v) for k, v in vars(args).items()},
               "machine": {"cores": len(os.sched_getaffinity(0)), "loadavg_1m_start": round(os.getloadavg()[0], 2)},
               "versions": {m: package_version(m) for m in ("gunicorn", "flask", "requests")}}
    try:
        polling = run_polling(args, log_dir)
        sse, capacity = run_sse(args, log_dir)
    finally:
        stop_all_processes()
    add_ratios(polling)
    add_ratios(sse)
    summary["machine"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    summary.update({"polling": polling, "sse": sse, "request_threads": capacity,
                    "conclusion": conclusion(polling, sse, capacity)})
    print(f"\nlive progress: polling GET /api/v1/jobs/<id> with If-None-Match (ilgun, medium profile) against SSE "
          f"on gthread ({capacity} request threads); {args.seconds:g} s per phase, probe every "
          f"{1000 * PROBE_EVERY:.0f} ms on a new connection (ilgun: /healthz, SSE app: /ping); a probe that "
          f"timed out counts as {1000 * PROBE_TIMEOUT:.0f} ms")
    print(format_table(polling, sse))
    if any(r["load"] for r in sse):
        print("SSE streams per worker: " + ", ".join(f"K={r['load']} {r['streams_per_worker']}"
                                                     for r in sse if r["load"]))
    print(f"1-minute load: {summary['machine']['loadavg_1m_start']} at start, {summary['machine']['loadavg_1m_end']} "
          f"at end ({summary['machine']['cores']} cores): compare the ratios, not absolute times")
    print(f"conclusion: {summary['conclusion']}")
    print(f"reproduce: {summary['command']}")
    out.write_text(json.dumps(summary, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
