"""Per-job log lines: what a job logged while it ran, kept in the database for its owner.

Each execution has a JobLogBuffer. Lines get there two ways: the engine adds its own (started,
retrying, finished) directly, and JobLogCapture, a logging handler on the root logger, copies
every record logged on a job's thread (the dispatcher sets log_context.job_id there) — so a
kind just logs as usual. The buffer is written in the execution's own transactions (finish,
requeue) and by the monitor's flush while the job runs: never a write per line.
"""
from __future__ import annotations

import logging
import threading
import time

from service import log_context

FLUSH_INTERVAL = 1.0   # seconds between the monitor's flushes of running jobs' lines


class JobLogBuffer:
    def __init__(self):
        self._lines: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self.taken = 0   # lines handed out to be written so far
        # Held while taken lines are written, so the monitor's flush and the finish cannot
        # write one job's lines out of order.
        self.writing = threading.Lock()

    def add(self, level: str, message: str, at: float | None = None) -> None:
        with self._lock:
            self._lines.append((at or time.time(), level, message))

    @property
    def pending(self) -> bool:
        return bool(self._lines)

    def take(self) -> list[tuple[float, str, str]]:
        with self._lock:
            lines, self._lines = self._lines, []
            self.taken += len(lines)
        return lines

    def needs_trim(self, attempt: int, keep: int) -> bool:
        """Whether the job's stored lines may pass ``keep``: a first attempt that wrote few lines
        cannot (lines of an execution handed back before it are few too; a later trim catches up)."""
        return attempt > 1 or self.taken > keep // 2


class JobLogCapture(logging.Handler):
    """Copies log records made on a job's thread into that job's buffer (INFO and above)."""

    def __init__(self, level: int = logging.INFO):
        super().__init__(level)
        self._buffers: dict[str, JobLogBuffer] = {}

    def register(self, job_id: str, buffer: JobLogBuffer) -> None:
        self._buffers[job_id] = buffer

    def unregister(self, job_id: str) -> None:
        self._buffers.pop(job_id, None)

    def emit(self, record: logging.LogRecord) -> None:
        job_id = log_context.job_id.get()
        buffer = self._buffers.get(job_id) if job_id is not None else None
        if buffer is None:
            return
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the job
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            # the owner sees what went wrong, never a stack trace
            exc = record.exc_info[1]
            message = f"{message} ({type(exc).__name__}: {exc})"[:2000]
        buffer.add(record.levelname, message, record.created)


_capture: JobLogCapture | None = None
_capture_lock = threading.Lock()


def capture() -> JobLogCapture:
    """This process's capture handler, added to the root logger on first use."""
    global _capture
    with _capture_lock:
        if _capture is None:
            _capture = JobLogCapture()
            logging.getLogger().addHandler(_capture)
        return _capture
