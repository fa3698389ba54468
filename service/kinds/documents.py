"""What the document kinds (``ocr``, ``report``) share: the uploaded file they read, the OCR
engine they may use, and the checks of both at submit time (on the request thread: cheap)."""
from __future__ import annotations

import uuid
from typing import Any, Callable, Mapping

from service.errors import ValidationError
from service.ocr import check_available, get_cache
from service.ocr.available import ENGINES


def invalid(message: str, field: str) -> ValidationError:
    return ValidationError(message, details={"field": field})


def check_unknown(params: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise invalid(f"Unknown parameter {unknown[0]!r}.", unknown[0])


def file_id(params: Mapping[str, Any]) -> str:
    raw = params.get("file_id")
    if isinstance(raw, str):
        try:
            return str(uuid.UUID(raw))
        except ValueError:
            pass
    raise invalid("file_id must be the id of one of your uploads (POST /api/v1/files).", "file_id")


def flag(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise invalid(f"{name} must be true or false.", name)
    return value


def engine_choice(params: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[str, str | None]:
    """(engine, lang), checked installed: asking for what is not installed is a 400 naming what to install."""
    engine = params.get("engine", config.get("OCR_ENGINE", "paddle"))
    if not isinstance(engine, str) or engine not in ENGINES:
        raise invalid(f"engine must be one of {', '.join(ENGINES)}.", "engine")
    lang = params.get("lang")
    if lang is not None and not isinstance(lang, str):
        raise invalid("lang must be a language code such as eng, kor or eng+kor.", "lang")
    return engine, check_available(engine, lang, config) or lang


def ocr_text(ctx, engine: str, lang: str | None, options: Mapping[str, Any] | None = None) -> Callable:
    """``ocr(image) -> str`` for the report kind, borrowing the process's engine per call."""
    def ocr(image) -> str:
        with get_cache(ctx.config).use(engine, {"lang": lang, **(options or {})},
                                       cancelled=lambda: ctx.cancelled) as eng:
            return "\n".join(line.text for line in eng.recognize(image))
    return ocr
