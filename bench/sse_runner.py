"""The SSE side of bench/live_progress.py: bench/sse_app.py under the floor's gunicorn settings
(bench/floor_gunicorn.conf.py: gthread, the profile's workers x threads, loopback) and clients
that hold ``GET /events`` streams open, as browser tabs showing a job's live progress would.
"""
from __future__ import annotations

import json
import threading
import time

import requests

from bench_support import BENCH_DIR, start_process, venv_tool, wait_for
from floor_runner import CONFIG as FLOOR_CONFIG, FloorServer

CONNECT_TIMEOUT = 5.0


class SseServer(FloorServer):
    """The floor's gunicorn (settings, readiness check, clean-up) serving bench/sse_app.py."""

    def start(self) -> "SseServer":
        self.proc = start_process([venv_tool("gunicorn"), "-c", str(FLOOR_CONFIG), "sse_app:create_app()"],
                                  env=self.env, log_path=self.log_path, cwd=BENCH_DIR)
        wait_for(self._ready, label=f"{self.label}: waiting for {self.profile.workers} workers", timeout=60)
        return self


class Stream(threading.Thread):
    """One SSE client: ``GET /events?seconds=T``, read until ``stop`` is set. ``opened`` is set
    at the first event, i.e. once a request thread serves the stream; ``pid`` says which worker."""

    def __init__(self, url: str, seconds: int, stop: threading.Event):
        super().__init__(daemon=True, name="sse-client")
        self.url, self.seconds, self.stop = url, seconds, stop
        self.opened, self.pid, self.events, self.error = threading.Event(), None, 0, None

    def run(self) -> None:
        try:
            with requests.get(self.url, params={"seconds": self.seconds}, stream=True,
                              timeout=(CONNECT_TIMEOUT, self.seconds + 30)) as r:
                for line in r.iter_lines(chunk_size=None):   # one HTTP chunk per event, as it comes
                    if line.startswith(b"data:"):
                        self.events += 1
                        self.pid = self.pid or json.loads(line[5:])["pid"]
                        self.opened.set()
                    if self.stop.is_set():
                        break   # closing the connection makes the server's next write fail
        except requests.RequestException as exc:
            self.error = f"{type(exc).__name__}: {str(exc)[:120]}"


class OpenStreams:
    """K streams opened together; ``close()`` ends them (bounded: a stream notices within about
    one event, a stream still queued behind others once it gets a thread)."""

    def __init__(self, url: str, k: int, seconds: int, open_wait: float):
        self.stop = threading.Event()
        self.streams = [Stream(url, seconds, self.stop) for _ in range(k)]
        for s in self.streams:
            s.start()
        deadline = time.monotonic() + open_wait
        for s in self.streams:   # streams beyond the free request threads never open: wait no longer
            s.opened.wait(max(0.0, deadline - time.monotonic()))
        self.opened = [s for s in self.streams if s.opened.is_set()]

    def per_worker(self) -> list[int]:
        """Open streams per worker, most first: gunicorn does not spread them evenly."""
        counts: dict[int, int] = {}
        for s in self.opened:
            counts[s.pid] = counts.get(s.pid, 0) + 1
        return sorted(counts.values(), reverse=True)

    def close(self, timeout: float = 15.0) -> list[str]:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for s in self.streams:
            s.join(max(0.0, deadline - time.monotonic()))
        return [s.error for s in self.streams if s.error]


def wait_until_drained(url: str, in_a_row: int) -> None:
    """Wait until ``in_a_row`` fresh-connection requests to ``url`` answer quickly one after the
    other: streams and timed-out requests still queued in the workers are gone before the next
    phase starts."""
    fast = [0]

    def check():
        started = time.perf_counter()
        try:
            quick = requests.get(url, timeout=CONNECT_TIMEOUT).ok and time.perf_counter() - started < 0.2
        except requests.RequestException:
            quick = False
        fast[0] = fast[0] + 1 if quick else 0
        return fast[0] >= in_a_row, f"{fast[0]} quick answers in a row"
    wait_for(check, label="sse: waiting for the workers to drain", timeout=60, interval=0.05)
