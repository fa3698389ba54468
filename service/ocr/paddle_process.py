"""The worker's side of a PaddleOCR engine process (paddle_server.py says why it is a process).

One ``PaddleProcess`` per engine: started when the engine is built, asked one page at a time,
stopped when the cache drops the engine. Every wait has a deadline and watches the child: a
child that dies (OOM killer, a crash in Paddle) or overruns its deadline is killed and reported
as OcrFailed, and the process is marked dead so the cache builds a new one for the next page.
"""
from __future__ import annotations

import logging
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping

from service.ocr.errors import OcrFailed
from service.ocr.paddle_server import HEADER

log = logging.getLogger(__name__)

SERVER = Path(__file__).with_name("paddle_server.py")


def child_env(config: Mapping) -> dict:
    """The environment of the engine process. PaddleX reads these once, at import. Without the
    first, start-up probes model hubs (~9 s offline); PaddleX also writes under ~/.paddlex,
    which the container's user cannot."""
    env = dict(os.environ)
    env.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")
    if "PADDLE_PDX_CACHE_HOME" not in env:
        home = config.get("OCR_PADDLE_HOME") or os.path.join(config.get("ILGUN_DATA") or "./instance", "paddlex")
        os.makedirs(home, exist_ok=True)
        env["PADDLE_PDX_CACHE_HOME"] = os.path.abspath(home)
    return env


class PaddleProcess:
    def __init__(self, kwargs: dict, config: Mapping, *, nice: int, sched_idle: bool, start_timeout: float):
        self._lock = threading.Lock()   # one request at a time on the pipe
        self.dead = False
        began = time.perf_counter()
        self._proc = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env=child_env(config), close_fds=True)
        try:
            reply = self.call({"op": "init", "kwargs": kwargs, "nice": nice, "sched_idle": sched_idle},
                              start_timeout, "start")
        except BaseException:
            self.close()
            raise
        if not reply["ok"]:
            self.close()
            raise OcrFailed(f"PaddleOCR failed to start: {reply['error']}: {reply['message']}")
        self.pid = self._proc.pid
        self.load_seconds = time.perf_counter() - began

    @property
    def alive(self) -> bool:
        return not self.dead and self._proc.poll() is None

    def call(self, message: dict, timeout: float, what: str, payload: bytes = b"") -> dict:
        """Send ``message`` (and ``payload``, raw bytes after it), wait up to ``timeout``
        seconds for the reply. On any trouble the child is killed (its state is unknown) and
        OcrFailed raised."""
        with self._lock:
            if not self.alive:
                raise OcrFailed("The PaddleOCR process is not running.")
            try:
                if payload:
                    message = {**message, "nbytes": len(payload)}
                data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
                self._proc.stdin.write(HEADER.pack(len(data)) + data)
                if payload:
                    self._proc.stdin.write(payload)
                self._proc.stdin.flush()
                deadline = time.monotonic() + timeout
                header = self._read(HEADER.size, deadline, what)
                return pickle.loads(self._read(HEADER.unpack(header)[0], deadline, what))
            except OcrFailed:
                self._kill()
                raise
            except (OSError, ValueError, pickle.UnpicklingError) as exc:   # a broken pipe: the child died
                self._kill()
                raise OcrFailed(f"The PaddleOCR process failed during {what}: {self._death(exc)}") from exc

    def _read(self, size: int, deadline: float, what: str) -> bytes:
        fd = self._proc.stdout.fileno()
        chunks, got = [], 0
        while got < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OcrFailed(f"PaddleOCR took longer than its limit during {what}; its process was stopped.")
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, min(size - got, 1 << 20))
            if not chunk:
                raise OcrFailed(f"The PaddleOCR process ended during {what}: {self._death(None)}")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _death(self, exc) -> str:
        try:
            code = self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return str(exc) if exc else "no reply"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def _kill(self) -> None:
        self.dead = True
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            log.error("PaddleOCR process %s did not exit", self._proc.pid)
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self, timeout: float = 5.0) -> None:
        """Ask the child to exit (it frees everything by exiting); kill it if it does not."""
        if self._proc.poll() is None and not self.dead:
            try:
                with self._lock:
                    data = pickle.dumps({"op": "stop"})
                    self._proc.stdin.write(HEADER.pack(len(data)) + data)
                    self._proc.stdin.flush()
                self._proc.wait(timeout=timeout)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        self._kill()
