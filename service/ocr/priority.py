"""OCR runs at a lower CPU priority than the worker's request threads.

Why: OCR jobs run on as many cores as the host has (the kind's global limit), so while they run
every core is busy, and a status request waited for a time slice: the p99 of GET /api/v1/jobs/<id>
grew 2.3–3.7× (bench/ocr.py). A niced thread still gets every idle cycle, so OCR throughput is
the same when nothing else wants the CPU.

Linux gives each thread its own nice value, but an unprivileged process may never lower one
again, so the executor thread that runs a job (and later other kinds' jobs) is left alone: the
PaddleOCR engine is built and called on one dedicated thread per process, niced once when it
starts (the engine is lent to one caller at a time anyway). Tesseract runs under ``nice``.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_NICE = 10

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_executor_pid: int | None = None


def nice_value(config: Mapping | None) -> int:
    return max(0, min(19, int((config or {}).get("OCR_NICE", DEFAULT_NICE))))


def _lower_priority(nice: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:  # a sandbox may forbid it: OCR still works, at normal priority
        log.warning("could not lower the OCR thread's priority: %s", exc)


def run_niced(config: Mapping | None, fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` on this process's OCR thread (niced by OCR_NICE), or right here if 0."""
    nice = nice_value(config)
    if nice == 0:
        return fn(*args)
    global _executor, _executor_pid
    with _lock:
        if _executor is None or _executor_pid != os.getpid():   # threads do not survive a fork
            _executor = ThreadPoolExecutor(1, thread_name_prefix="ocr-engine", initializer=_lower_priority,
                                           initargs=(nice,))
            _executor_pid = os.getpid()
        executor = _executor
    return executor.submit(fn, *args).result()


def nice_command(config: Mapping | None, cmd: list[str]) -> list[str]:
    """``cmd`` prefixed with ``nice -n N`` (a child process: it may be niced freely)."""
    nice = nice_value(config)
    binary = shutil.which("nice") if nice else None
    return [binary, "-n", str(nice), *cmd] if binary else cmd
