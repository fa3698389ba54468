"""OCR runs at a lower CPU priority than the worker's request threads.

Why: OCR jobs run on as many cores as the host has (the kind's global limit), so while they run
every core is busy, and a status request waited for a time slice: the p99 of GET /api/v1/jobs/<id>
grew several-fold (bench/ocr.py). A niced process still gets every idle cycle, so OCR throughput
is the same when nothing else wants the CPU.

Both engines run OCR in child processes, which may be niced freely (an unprivileged process may
never lower a nice value again, so the worker itself is left alone): the PaddleOCR engine
process lowers its own priority when it starts (paddle_server.py), Tesseract runs under
``nice`` and ``chrt --idle``. Two means: a nice value (``OCR_NICE``) shrinks OCR's share of a
busy CPU, and the SCHED_IDLE policy (``OCR_SCHED_IDLE``) makes the kernel switch to a waking
request thread at once instead of at the end of OCR's time slice.
"""
from __future__ import annotations

import shutil
from typing import Mapping

DEFAULT_NICE = 10


def nice_value(config: Mapping | None) -> int:
    return max(0, min(19, int((config or {}).get("OCR_NICE", DEFAULT_NICE))))


def sched_idle(config: Mapping | None) -> bool:
    """OCR processes under Linux's SCHED_IDLE policy (paddle_server.lower_priority says why)."""
    return bool((config or {}).get("OCR_SCHED_IDLE", True))


def nice_command(config: Mapping | None, cmd: list[str]) -> list[str]:
    """``cmd`` prefixed with ``nice -n N`` and ``chrt --idle 0`` (a child process: it may be
    niced freely); each only where its tool is installed."""
    nice = nice_value(config)
    binary = shutil.which("nice") if nice else None
    chrt = shutil.which("chrt") if sched_idle(config) else None
    cmd = [chrt, "--idle", "0", *cmd] if chrt else cmd
    return [binary, "-n", str(nice), *cmd] if binary else cmd
