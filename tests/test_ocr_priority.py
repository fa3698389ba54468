"""OCR runs niced: in child processes (the PaddleOCR engine process, tesseract), never the worker.
That the engine process really is niced is tested with the engine (test_ocr_engines.py)."""
from __future__ import annotations

import os

from service.ocr import priority


def test_nice_value_is_bounded():
    assert priority.nice_value({}) == priority.DEFAULT_NICE == 10
    assert priority.nice_value({"OCR_NICE": 40}) == 19 and priority.nice_value({"OCR_NICE": -5}) == 0


def test_tesseract_runs_under_nice_and_sched_idle():
    cmd = priority.nice_command({"OCR_NICE": 7}, ["tesseract", "x"])
    assert cmd[1:3] == ["-n", "7"] and cmd[4:] == ["--idle", "0", "tesseract", "x"]
    assert cmd[3].endswith("chrt")
    assert priority.nice_command({"OCR_NICE": 0, "OCR_SCHED_IDLE": False}, ["tesseract", "x"]) == ["tesseract", "x"]


def test_a_command_under_them_really_is_niced_and_idle():
    import subprocess
    import sys
    probe = "import os; print(os.nice(0), os.sched_getscheduler(0) == os.SCHED_IDLE)"
    out = subprocess.run(priority.nice_command({"OCR_NICE": 5}, [sys.executable, "-c", probe]),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(os.nice(0) + 5), "True"]
