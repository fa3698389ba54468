"""The failure codes of document analysis, raised as ``JobFailed`` so a report job fails with them.

Every code is stable (programs match on it); ``details`` says which limit or what was wrong. Bad
documents are permanent failures: retrying the same bytes cannot help, so none is transient.

    FILE_TOO_LARGE       the input is larger than REPORT_MAX_INPUT_BYTES
    UNSUPPORTED_FILE_TYPE the bytes are none of XLSX/XLSM, PDF, PNG, JPEG, TIFF, WebP, BMP
                         (decided from the content, never from the name)
    XLSX_TOO_LARGE       zip bomb guard: too many members, too many uncompressed bytes, or a member
                         compressed suspiciously well; checked from the zip directory before
                         anything is decompressed
    XLSX_INVALID         a zip that is not a readable workbook
    PDF_ENCRYPTED        needs a password (the empty password is tried first)
    PDF_INVALID          pypdf cannot read it (truncated, garbage, or beyond pypdf's own limits)
    PDF_TOO_MANY_PAGES   more pages than REPORT_PDF_REFUSE_PAGES (below that, only the first
                         REPORT_PDF_MAX_PAGES are analysed and the result says ``truncated``)
    IMAGE_TOO_LARGE      more pixels than REPORT_IMAGE_MAX_PIXELS (decompression bomb guard)
    IMAGE_INVALID        Pillow cannot decode it, or it is not the format its bytes claim
"""
from __future__ import annotations

from typing import Any

from service.engine.kind import JobFailed

FILE_TOO_LARGE = "FILE_TOO_LARGE"
UNSUPPORTED_TYPE = "UNSUPPORTED_FILE_TYPE"   # the uploads' and the ocr kind's code too
XLSX_TOO_LARGE = "XLSX_TOO_LARGE"
XLSX_INVALID = "XLSX_INVALID"
PDF_ENCRYPTED = "PDF_ENCRYPTED"
PDF_INVALID = "PDF_INVALID"
PDF_TOO_MANY_PAGES = "PDF_TOO_MANY_PAGES"
IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
IMAGE_INVALID = "IMAGE_INVALID"

CODES = (FILE_TOO_LARGE, UNSUPPORTED_TYPE, XLSX_TOO_LARGE, XLSX_INVALID, PDF_ENCRYPTED, PDF_INVALID,
         PDF_TOO_MANY_PAGES, IMAGE_TOO_LARGE, IMAGE_INVALID)


def failed(code: str, message: str, **details: Any) -> JobFailed:
    return JobFailed(code, message, details or None)


def describe(exc: BaseException) -> str:
    """A parser's exception as one short line for a user: its class and message, never a trace."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
