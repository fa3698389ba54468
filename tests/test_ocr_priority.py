"""OCR runs niced: the PaddleOCR thread and the tesseract child, never the executor thread."""
from __future__ import annotations

import os
import threading

from service.ocr import priority


def _my_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_paddle_work_runs_on_one_niced_thread_and_the_caller_keeps_its_priority():
    before = _my_nice()
    seen = {priority.run_niced({"OCR_NICE": 10}, lambda: (threading.get_native_id(), _my_nice()))
            for _ in range(3)}
    assert len(seen) == 1 and next(iter(seen))[1] == 10          # the same thread every time, niced
    assert next(iter(seen))[0] != threading.get_native_id()
    assert _my_nice() == before
    assert priority.run_niced({"OCR_NICE": 0}, _my_nice) == before   # 0: right here


def test_tesseract_runs_under_nice():
    assert priority.nice_command({"OCR_NICE": 7}, ["tesseract", "x"])[1:] == ["-n", "7", "tesseract", "x"]
    assert priority.nice_command({"OCR_NICE": 0}, ["tesseract", "x"]) == ["tesseract", "x"]
