"""OCR engines behind one small interface, for job kinds running on executor threads.

An engine turns one page image into lines of text. It is NOT thread-safe: callers get engines
from ``service.ocr.cache`` which lends each to one thread at a time. PaddleOCR runs in a child
process of its own (paddle_server.py), one instance each: two PaddleOCR predictors running at
once in one process crash (``RuntimeError: std::exception`` in 2 of 5 runs, measured), and in
the worker's own process PaddleOCR's Python side starved the request threads of the GIL.

Boxes are four corners ``[[x, y] × 4]`` in the page image's pixels, clockwise from top-left:
PaddleOCR's native shape, which keeps slanted lines exact; Tesseract's rectangles are widened
to four corners. ``OcrLine.bbox`` gives the enclosing ``[x0, y0, x1, y1]`` when a rectangle is
enough.
"""
from __future__ import annotations

import ctypes
import io
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from PIL import Image, ImageDraw, ImageFont

from service.ocr import available, priority
from service.errors import ValidationError
from service.ocr.errors import OcrEngineUnavailable, OcrFailed
from service.ocr.paddle_process import PaddleProcess



@dataclass(frozen=True)
class OcrLine:
    text: str
    box: tuple[tuple[int, int], ...]   # 4 corners, clockwise from top-left, in image pixels
    confidence: float                  # 0..1 (the engine's own scale, mapped)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        xs = [p[0] for p in self.box]
        ys = [p[1] for p in self.box]
        return (min(xs), min(ys), max(xs), max(ys))

    def to_dict(self) -> dict:
        return {"text": self.text, "box": [list(p) for p in self.box],
                "confidence": round(self.confidence, 4)}


def rect_box(x0: int, y0: int, x1: int, y1: int) -> tuple[tuple[int, int], ...]:
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


class OcrEngine:
    name: str = ""
    model: str = ""          # which models/data it uses, for results and logs
    lang: str | None = None

    def recognize(self, image: Image.Image) -> list[OcrLine]:
        raise NotImplementedError

    def warm(self) -> float:
        """One recognition of a small generated line: pays the first call's one-off costs
        (PaddleOCR's first call takes seconds). Returns the seconds it took."""
        img = Image.new("RGB", (480, 64), "white")
        draw = ImageDraw.Draw(img)
        try:
            font = ImageFont.truetype("DejaVuSans.ttf", 28)
        except OSError:
            font = ImageFont.load_default()
        draw.text((12, 14), "warm up 1234", font=font, fill="black")
        began = time.perf_counter()
        self.recognize(img)
        return time.perf_counter() - began

    def close(self) -> None:
        """Drop the engine's models; the object must not be used afterwards."""


def _trim_heap() -> None:
    """Hand freed heap back to the OS. glibc keeps freed blocks in its arenas (one per thread
    that allocated), so without this RSS barely drops after a model is freed."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # transparent areas become white paper, not black
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, "white")
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


@dataclass(frozen=True)
class PaddleSettings:
    det_model_dir: str
    rec_model_dir: str
    det_model_name: str = available.DEFAULT_DET_MODEL
    rec_model_name: str = available.DEFAULT_REC_MODEL
    textline_orientation: bool = False     # the classifier flips upright lines on clean pages: off by default
    textline_model_dir: str | None = None
    det_limit_side_len: int = 960
    cpu_threads: int = 1

    @classmethod
    def from_config(cls, config: Mapping, options: Mapping | None = None) -> "PaddleSettings":
        """Model folders come from config only (a user must not point the server at a path);
        the rest may be chosen per job through ``options``."""
        options = options or {}
        det, rec = available.paddle_model_dirs(config)
        problem = available.paddle_problem(config)
        if problem:
            raise OcrEngineUnavailable(problem, details={"engine": "paddle", "install": available.PADDLE_INSTALL})
        textline = bool(options.get("textline_orientation", config.get("OCR_TEXTLINE_ORIENTATION", False)))
        textline_dir = config.get("OCR_TEXTLINE_MODEL_DIR") or None
        if textline and not textline_dir:
            # PaddleOCR would fetch PP-LCNet_x1_0_textline_ori from a model hub: refuse instead
            raise OcrEngineUnavailable(
                "Text line orientation needs its model (PP-LCNet_x1_0_textline_ori) in a local folder: "
                "set OCR_TEXTLINE_MODEL_DIR.", details={"field": "textline_orientation"})
        side = int(options.get("det_limit_side_len", config.get("OCR_DET_LIMIT_SIDE_LEN", 960)))
        threads = int(options.get("cpu_threads", config.get("OCR_CPU_THREADS", 1)))
        return cls(det_model_dir=str(det), rec_model_dir=str(rec),
                   det_model_name=config.get("OCR_DET_MODEL_NAME") or available.DEFAULT_DET_MODEL,
                   rec_model_name=config.get("OCR_REC_MODEL_NAME") or available.DEFAULT_REC_MODEL,
                   textline_orientation=textline, textline_model_dir=textline_dir if textline else None,
                   det_limit_side_len=max(32, min(side, 4096)), cpu_threads=max(1, min(threads, os.cpu_count() or 1)))


def paddle_kwargs(settings: PaddleSettings) -> dict:
    """``PaddleOCR(**paddle_kwargs(settings))``: offline, from local model folders."""
    kwargs = dict(
        text_detection_model_name=settings.det_model_name, text_detection_model_dir=settings.det_model_dir,
        text_recognition_model_name=settings.rec_model_name, text_recognition_model_dir=settings.rec_model_dir,
        use_doc_orientation_classify=False, use_doc_unwarping=False,
        use_textline_orientation=settings.textline_orientation,
        device="cpu", cpu_threads=settings.cpu_threads,
        text_det_limit_type="max", text_det_limit_side_len=settings.det_limit_side_len)
    if settings.textline_orientation:
        kwargs["textline_orientation_model_dir"] = settings.textline_model_dir
    return kwargs


class PaddleEngine(OcrEngine):
    """PaddleOCR in its own niced process (paddle_process.py, paddle_server.py say why)."""
    name = "paddle"

    def __init__(self, settings: PaddleSettings, config: Mapping | None = None):
        config = config or {}
        self.settings = settings
        self.model = (f"PaddleOCR 3 {settings.det_model_name} + {settings.rec_model_name}"
                      + (" + textline orientation" if settings.textline_orientation else ""))
        self.page_timeout = float(config.get("OCR_PAGE_TIMEOUT", 120.0))
        kwargs = paddle_kwargs(settings)
        self._process = PaddleProcess(kwargs, config, nice=priority.nice_value(config),
                                      sched_idle=priority.sched_idle(config),
                                      start_timeout=float(config.get("OCR_ENGINE_START_TIMEOUT", 180.0)))
        self.load_seconds = self._process.load_seconds

    @property
    def pid(self) -> int:
        """The engine process's pid."""
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.alive

    def recognize(self, image: Image.Image) -> list[OcrLine]:
        img = image if image.mode in ("L", "RGB") else _rgb(image)
        reply = self._process.call({"op": "recognize", "mode": img.mode, "size": img.size},
                                   self.page_timeout, "a page", payload=img.tobytes())
        if not reply["ok"]:
            raise OcrFailed(f"PaddleOCR failed on a page: {reply['error']}: {reply['message']}")
        lines: list[OcrLine] = []
        for text, score, poly in reply["lines"]:
            text = str(text).strip()
            if text:
                box = tuple((int(x), int(y)) for x, y in poly[:4])
                lines.append(OcrLine(text, box, max(0.0, min(1.0, float(score)))))
        return lines

    def close(self) -> None:
        self._process.close()


class TesseractEngine(OcrEngine):
    """The ``tesseract`` command, one process per page (1.2 pages/s, ~70 MB). The CLI rather
    than pytesseract: pytesseract writes each image to a temp file and parses the same TSV;
    here the image goes through stdin and the process can be given a clean environment."""
    name = "tesseract"

    def __init__(self, lang: str | None = None, config: Mapping | None = None, psm: int = 3):
        config = config or {}
        self.lang = available.check_available("tesseract", lang, config) or "eng"
        self.binary = available.tesseract_binary(config)
        self.psm = int(psm)
        self.timeout = float(config.get("OCR_PAGE_TIMEOUT", 120.0))
        self._config = config
        self.model = f"Tesseract LSTM, lang {self.lang}"
        # One OpenMP thread: executor slots already use the cores; tesseract's own threads only
        # oversubscribe them (and OpenMP spin-waits burn CPU).
        self._env = {**os.environ, "OMP_THREAD_LIMIT": "1"}

    def recognize(self, image: Image.Image) -> list[OcrLine]:
        img = image if image.mode in ("L", "RGB") else _rgb(image)
        buf = io.BytesIO()
        img.save(buf, "PPM")  # uncompressed: the cheapest format leptonica reads from stdin
        cmd = [self.binary, "stdin", "stdout", "-l", self.lang, "--psm", str(self.psm)]
        dpi = image.info.get("dpi")
        if dpi:
            cmd += ["--dpi", str(int(round(float(dpi[0] if isinstance(dpi, tuple) else dpi))))]
        try:
            done = subprocess.run(priority.nice_command(self._config, cmd + ["tsv"]), input=buf.getvalue(),
                                  capture_output=True,
                                  timeout=self.timeout, env=self._env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise OcrFailed(f"tesseract took longer than {self.timeout:.0f} s on a page") from exc
        except OSError as exc:
            raise OcrEngineUnavailable(f"tesseract cannot be run: {exc}") from exc
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
            raise OcrFailed(f"tesseract failed: {tail[0] if tail else done.returncode}")
        return parse_tsv(done.stdout.decode("utf-8", "replace"))

    def close(self) -> None:
        pass  # nothing held between pages


def parse_tsv(tsv: str) -> list[OcrLine]:
    """Tesseract's TSV words grouped into lines by (page, block, paragraph, line); a line's
    confidence is its words' mean (Tesseract's 0..100 mapped to 0..1)."""
    groups: dict[tuple, list] = {}
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t", 11)
        if len(cols) < 12 or cols[0] != "5":
            continue
        text = cols[11].strip()
        conf = float(cols[10])
        if not text or conf < 0:
            continue
        left, top, width, height = (int(c) for c in cols[6:10])
        groups.setdefault(tuple(int(c) for c in cols[1:5]), []).append((text, left, top, width, height, conf))
    lines = []
    for words in groups.values():
        x0 = min(w[1] for w in words)
        y0 = min(w[2] for w in words)
        x1 = max(w[1] + w[3] for w in words)
        y1 = max(w[2] + w[4] for w in words)
        conf = sum(w[5] for w in words) / len(words) / 100.0
        lines.append(OcrLine(" ".join(w[0] for w in words), rect_box(x0, y0, x1, y1), max(0.0, min(1.0, conf))))
    return lines


@dataclass(frozen=True)
class EngineSpec:
    """What the cache needs to know before building an engine: ``key`` identifies engines
    that are interchangeable, ``heavy`` ones hold models in this process (counted against the
    cache's size, lent to one thread at a time); light ones are built per use."""
    name: str
    key: tuple
    heavy: bool
    build: Callable[[], OcrEngine]


def resolve(name: str, options: Mapping | None, config: Mapping) -> EngineSpec:
    """Check availability (raising the domain errors) and describe the engine to build."""
    options = options or {}
    if name == "paddle":
        available.check_available("paddle", options.get("lang"), config)
        settings = PaddleSettings.from_config(config, options)
        # lang is not part of the key: the one model reads all its languages
        return EngineSpec("paddle", ("paddle", settings), True, lambda: PaddleEngine(settings, config))
    if name == "tesseract":
        lang = available.check_available("tesseract", options.get("lang"), config) or "eng"
        psm = options.get("psm", 3)
        if psm not in (1, 3, 4, 6, 11, 12):
            raise ValidationError("psm must be one of 1, 3, 4, 6, 11, 12.", details={"field": "psm"})
        return EngineSpec("tesseract", ("tesseract", lang, psm), False,
                          lambda: TesseractEngine(lang, config, psm=psm))
    raise OcrEngineUnavailable(f"Unknown OCR engine {name!r}; use one of {', '.join(available.ENGINES)}.",
                               details={"field": "engine"})
