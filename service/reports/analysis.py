"""``analyze``: one document in, one result (``docs/report_schema.json``) out.

Runs on a job's executor thread: no Flask, no database. The caller gives

- ``config``: a mapping with ``.get`` (the app config); limits in ``service.reports.settings``;
- ``ocr``: ``ocr(PIL.Image) -> str`` or None (no OCR; the result says so). Its exceptions pass
  through untouched: an OCR engine failing is not a property of the document;
- ``progress(percent, message)``: called per page, sheet or step, 0-100 of the analysis;
- ``cancelled()``: polled between pages and sheets (and every few thousand rows); when it
  answers true, ``JobCancelled`` is raised;
- ``name``: the file's name as the user knows it, for the result only (the type comes from the
  bytes);
- ``include_gps``: put an image's EXIF location in ``result.private.gps`` (default: only
  ``image.has_gps``).

Bad documents raise ``JobFailed`` with the codes in ``service.reports.errors``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping

from service.engine.kind import JobCancelled
from service.reports import errors
from service.reports.fields import count_by_type
from service.reports.settings import ReportSettings
from service.filetypes import IMAGE_TYPES, MIME, sniff

SCHEMA_VERSION = 1
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_META_MAX = 500
_CATEGORY = {"xlsx": "spreadsheet", "pdf": "document"}
_META_KEYS = ("title", "author", "subject", "creator", "producer", "created", "modified")


def _no_progress(percent: float, message: str | None = None) -> None:
    pass


def _sha256(path: Path, check_cancelled: Callable[[], None]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
            check_cancelled()
    return digest.hexdigest()


def _unsupported(path: Path, name: str | None) -> errors.JobFailed:
    with open(path, "rb") as f:
        head = f.read(8)
    details: dict[str, Any] = {"name": name}
    message = "The file is not an XLSX workbook, a PDF or a PNG, JPEG, TIFF, WebP or BMP image."
    if head == _OLE2:
        details["detected"] = "ole2"
        message = ("The file is a legacy Office file (.xls, .doc) or a password-protected workbook; "
                   "neither can be analysed.")
    return errors.failed(errors.UNSUPPORTED_TYPE, message, **details)


def _metadata(values: Mapping[str, Any] | None) -> dict:
    out = {}
    for key in _META_KEYS:
        value = (values or {}).get(key)
        text = "" if value is None else str(value).replace("\x00", "").strip()[:_META_MAX]
        out[key] = text or None
    return out


def analyze(path, config: Mapping[str, Any] | None = None, ocr=None, progress=None, cancelled=None, *,
            name: str | None = None, include_gps: bool = False) -> dict:
    settings = ReportSettings.from_config(config)
    path = Path(path)
    progress = progress or _no_progress

    def check_cancelled() -> None:
        if cancelled is not None and cancelled():
            raise JobCancelled()

    size = path.stat().st_size
    if size > settings.max_input_bytes:
        raise errors.failed(errors.FILE_TOO_LARGE, "The file is too large to analyse.",
                            size=size, max_bytes=settings.max_input_bytes)
    kind = sniff(path)
    if kind is None:
        raise _unsupported(path, name)
    if kind == "xlsm":  # the same workbook layout; the result says macro_enabled
        kind = "xlsx"
    check_cancelled()
    progress(0.0, f"analysing a {kind.upper()} file")
    sha256 = _sha256(path, check_cancelled)
    mime = MIME[kind]

    if kind == "xlsx":
        from service.reports.xlsx import analyze_xlsx
        part = analyze_xlsx(path, settings, progress, check_cancelled)
        if part["macro_enabled"]:
            mime = MIME["xlsm"]
    elif kind == "pdf":
        from service.reports.pdf import analyze_pdf
        part = analyze_pdf(path, settings, progress, check_cancelled, ocr=ocr)
    else:
        from service.reports.image import analyze_image
        part = analyze_image(path, kind, settings, progress, check_cancelled, ocr=ocr, include_gps=include_gps)

    fields = part["fields"][: settings.max_fields]
    text = part.get("text") or {"content": "", "length": 0, "truncated": False, "source": "none"}
    summary = {
        **_metadata(part.get("metadata")),
        "page_count": part.get("page_count"),
        "pages_analysed": part.get("pages_analysed"),
        "sheet_count": len(part["sheet_names"]) if "sheet_names" in part else None,
        "sheets_analysed": len(part["sheets"]) if "sheets" in part else None,
        "width": part["image"]["width"] if "image" in part else None,
        "height": part["image"]["height"] if "image" in part else None,
        "encrypted": bool(part.get("encrypted", False)),
        "ocr_available": ocr is not None,
        "field_counts": count_by_type(fields),
        "text_chars": text["length"],
        "truncated": bool(part.get("truncated", False)),
    }
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "source": {"type": kind, "category": _CATEGORY.get(kind, "image"), "name": name, "size": size,
                   "sha256": sha256, "mime": mime},
        "summary": summary,
        "fields": fields,
        "text": text,
        "warnings": part.get("warnings", []),
    }
    if kind == "pdf":
        result["pages"] = part["pages"]
    elif kind == "xlsx":
        result["sheets"] = part["sheets"]
        result["sheet_names"] = part["sheet_names"]
    elif kind in IMAGE_TYPES:
        result["image"] = part["image"]
    if "private" in part:
        result["private"] = part["private"]
    progress(100.0, "analysed")
    return result
