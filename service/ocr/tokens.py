"""Places for PaddleOCR engines on this host, shared by its gunicorn workers.

Why: the ocr kind's global limit caps OCR *jobs* running at once, not the workers holding an
*engine* (1.4-1.9 GB each): when a job started on a worker other than the ones whose engines
sat idle until their TTL, a third engine was built (4.5-5 GB on the 2-core profile instead of
~3.3), and the job paid the engine's cold start (15-25 s) on top. So:

* a worker process holds one token (a file lock, ``OCR_ENGINES_PER_HOST`` of them, default one
  per core) for as long as it holds a heavy engine; it takes one before building it;
* a worker without a token does not claim OCR jobs while no token is free (the ocr kind's gate
  in the dispatcher): the workers whose engines are warm take them, at their next claim;
* a process that needs a token and finds none (a report job reading an image, a race) marks
  the host's ``wanted`` file while it waits; the other workers' cache reapers see it within a
  second and let their idle engines go.

The OS drops a file lock when its process dies, so a killed worker never keeps a token. The
folder is per host (named after it) so a data folder shared by several hosts does not mix them.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

from filelock import FileLock, Timeout

from service.ocr.errors import EngineBusy, EngineWaitCancelled

WAIT_SLICE = 0.25
WANTED_WINDOW = 3.0   # seconds a mark of the wanted file counts


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class EngineTokens:
    def __init__(self, folder: str | os.PathLike, count: int):
        self.folder = Path(folder)
        self.count = max(1, int(count))
        self._held: FileLock | None = None
        self._lock = threading.Lock()
        self._wanted_by_me = 0.0

    @classmethod
    def from_config(cls, config: Mapping) -> "EngineTokens | None":
        """The host's tokens in the data folder; None when OCR_ENGINES_PER_HOST is 0 (no bound)
        or the config names no data folder (nothing shared to meet in)."""
        count = int(config.get("OCR_ENGINES_PER_HOST", -1))
        if count == 0 or not config.get("ILGUN_DATA"):
            return None
        return cls(Path(config["ILGUN_DATA"]) / "run" / socket.gethostname() / "ocr-engines",
                   _cores() if count < 0 else count)

    def _paths(self) -> list[Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        return [self.folder / f"engine-{i}.lock" for i in range(self.count)]

    @property
    def held(self) -> bool:
        return self._held is not None

    def _free_lock(self) -> FileLock | None:
        """A token's lock acquired by this process, or None if every token is taken."""
        for path in self._paths():
            lock = FileLock(str(path), thread_local=False)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            return lock
        return None

    def try_take(self) -> bool:
        """Take a free token for this process (True if it holds one now)."""
        with self._lock:
            if self._held is None:
                self._held = self._free_lock()
            return self._held is not None

    def free_or_held(self) -> bool:
        """Could this process run an engine now? (A look only: a free token is not kept.)"""
        with self._lock:
            if self._held is not None:
                return True
            lock = self._free_lock()
            if lock is None:
                return False
            lock.release()
            return True

    def take(self, cancelled: Callable[[], bool] | None = None, deadline: float | None = None) -> None:
        """Wait for a token, marking the host's wanted file so idle engines elsewhere let go."""
        while not self.try_take():
            if cancelled is not None and cancelled():
                raise EngineWaitCancelled()
            if deadline is not None and time.monotonic() >= deadline:
                raise EngineBusy()
            self.mark_wanted()
            time.sleep(WAIT_SLICE)

    def give_back(self) -> None:
        with self._lock:
            lock, self._held = self._held, None
        if lock is not None:
            lock.release()

    def mark_wanted(self) -> None:
        path = self.folder / "wanted"
        path.touch()
        self._wanted_by_me = time.time()

    def wanted(self) -> bool:
        """Another process waits for a token (marked within the last few seconds)."""
        try:
            mtime = (self.folder / "wanted").stat().st_mtime
        except OSError:
            return False
        return time.time() - mtime < WANTED_WINDOW and time.time() - self._wanted_by_me >= WANTED_WINDOW
