"""The PaddleOCR engine process: one PaddleOCR instance, serving one page at a time over a pipe.

Run by service/ocr/paddle_process.py as ``python paddle_server.py`` — never imported by the
service (it imports nothing of it, so the child carries neither Flask nor the app: only
PaddleOCR). Why a process and not a thread of the gunicorn worker: PaddleOCR's Python side holds
the GIL for much of a page, and a worker loading or running it starved that worker's request
threads (GET /api/v1/jobs/<id> p99 up to 23x idle, bench/ocr.py); a niced process competes only
for CPU, where the kernel gives way to the request threads, and when it exits every byte of its
~1.5 GB goes back to the OS.

Protocol (both directions): 8-byte big-endian length, then a pickle. The parent is this
process's only peer and started it, so pickle is safe here. A page's pixels follow their
message as raw bytes (``nbytes``), read into one buffer kept for the process's life: a fresh
6.5 MB object per page (an A4 page at 150 dpi) left glibc's heap fragmented, and the process
grew by up to 0.9 GB more than the same PaddleOCR called in-process (measured).

  parent -> {"op": "init", "kwargs": {...PaddleOCR(**kwargs)}, "nice": 10, "sched_idle": True}
  child  -> {"ok": True, "pid": ..., "load_seconds": ...}
  parent -> {"op": "recognize", "mode": "RGB", "size": (w, h), "nbytes": n} + n bytes of pixels
  child  -> {"ok": True, "lines": [(text, score, [[x, y], ...]), ...], "seconds": ...}
  any failure -> {"ok": False, "error": "TypeName", "message": "..."}
  parent -> {"op": "stop"}  (or closes the pipe)   -> the child exits

The child exits by itself when its parent dies (SIGKILLed worker): a watchdog thread notices
the parent pid change within a second.
"""
from __future__ import annotations

import os
import pickle
import struct
import sys
import threading
import time

HEADER = struct.Struct(">Q")


def read_message(stream):
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None  # the parent closed the pipe
    (size,) = HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


class PixelBuffer:
    """One growing buffer for the pages' pixels, reused page after page."""

    def __init__(self):
        self._buf = bytearray()

    def read(self, stream, n: int) -> memoryview | None:
        if len(self._buf) < n:
            self._buf = bytearray(n)
        view = memoryview(self._buf)[:n]
        got = 0
        while got < n:
            k = stream.readinto(view[got:])
            if not k:
                return None
            got += k
        return view


def write_message(stream, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def lower_priority(nice: int, sched_idle: bool) -> None:
    """For this process and every thread paddle starts from here on. SCHED_IDLE: the kernel
    preempts this process as soon as any normal task (a request thread) wakes, where a nice
    value only shrinks its share; either way it gets every cycle nobody else wants."""
    if nice:
        os.nice(nice)
    if sched_idle and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:  # a sandbox may forbid it: the nice value still applies
            print(f"ilgun OCR engine: SCHED_IDLE refused: {exc}", file=sys.stderr)


def _build(kwargs: dict):
    import logging
    import warnings
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
    from paddleocr import PaddleOCR
    # PaddleX logs each model it creates at INFO through its own handler
    logging.getLogger("paddlex").setLevel(logging.WARNING)
    return PaddleOCR(**kwargs)


def _recognize(ocr, message: dict, pixels) -> list:
    import numpy as np
    width, height = message["size"]
    channels = {"RGB": 3, "L": 1}[message["mode"]]
    array = np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, channels)
    if channels == 1:
        array = np.repeat(array, 3, axis=2)
    # PaddleX reads an ndarray as OpenCV's BGR; Pillow's bytes are RGB
    array = np.ascontiguousarray(array[:, :, ::-1])
    lines = []
    for res in ocr.predict(array):
        for text, score, poly in zip(res["rec_texts"], res["rec_scores"], res["rec_polys"]):
            lines.append((str(text), float(score), poly.tolist()))
    return lines


def serve(inp, out) -> int:
    ocr, pixels = None, PixelBuffer()
    while True:
        message = read_message(inp)
        if message is None or message.get("op") == "stop":
            return 0
        data = pixels.read(inp, message["nbytes"]) if message.get("nbytes") else None
        if message.get("nbytes") and data is None:
            return 0
        began = time.perf_counter()
        try:
            if message["op"] == "init":
                lower_priority(int(message.get("nice") or 0), bool(message.get("sched_idle")))
                ocr = _build(message["kwargs"])
                reply = {"ok": True, "pid": os.getpid(), "load_seconds": time.perf_counter() - began}
            elif message["op"] == "recognize":
                if ocr is None:
                    raise RuntimeError("recognize before init")
                reply = {"ok": True, "lines": _recognize(ocr, message, data), "seconds": time.perf_counter() - began}
            else:
                raise ValueError(f"unknown op {message.get('op')!r}")
        except Exception as exc:  # reported to the parent, which decides; the process lives on
            reply = {"ok": False, "error": type(exc).__name__, "message": str(exc)[:2000]}
        write_message(out, reply)


def main() -> int:
    # The protocol owns the real stdout; anything paddle prints goes to stderr (the worker's log).
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    return serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    sys.exit(main())
