"""PDFs with pypdf: metadata, page count, text per page, key fields.

Page cap (a choice): a PDF with more than REPORT_PDF_REFUSE_PAGES pages fails at once with
PDF_TOO_MANY_PAGES; below that, the first REPORT_PDF_MAX_PAGES pages are analysed and the result
says ``truncated`` (a 3000-page book still gets its metadata and the start of its text, rather
than a failure). Counting pages walks only the page tree, never the pages' content.

Encryption: the empty user password is tried first (many PDFs are "encrypted" only to carry
permission flags and open without a password); anything else is PDF_ENCRYPTED.

Pages without a text layer (scans): with an ``ocr`` callable, the page's images are read
(each checked against REPORT_IMAGE_MAX_PIXELS before decoding), at most REPORT_PDF_OCR_PAGES
pages; without one the result warns NO_TEXT_LAYER.

pypdf's own limits (stream sizes, decoding work; ``pypdf.Configuration``) stay at their
defaults; a page that hits one is skipped with a PAGE_UNREADABLE warning.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Callable

from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError, PyPdfError

from service.engine.kind import JobCancelled, JobFailed
from service.reports import errors
from service.reports.fields import detect
from service.reports.settings import ReportSettings

_META_MAX = 500


def _meta_text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).replace("\x00", "").strip()
    return text[:_META_MAX] or None


def _meta_date(getter: Callable[[], Any]) -> str | None:
    try:
        value = getter()
    except Exception:  # pypdf raises on malformed date strings; a date is not worth failing for
        return None
    return value.isoformat() if isinstance(value, dt.datetime) else None


def _metadata(reader: PdfReader) -> dict:
    try:
        info = reader.metadata
    except Exception:
        info = None
    if info is None:
        return {"title": None, "author": None, "subject": None, "creator": None, "producer": None,
                "created": None, "modified": None}
    return {
        "title": _meta_text(info.get("/Title")),
        "author": _meta_text(info.get("/Author")),
        "subject": _meta_text(info.get("/Subject")),
        "creator": _meta_text(info.get("/Creator")),
        "producer": _meta_text(info.get("/Producer")),
        "created": _meta_date(lambda: info.creation_date),
        "modified": _meta_date(lambda: info.modification_date),
    }


def _open(path) -> tuple[PdfReader, bool]:
    """The reader, decrypted if the empty password opens it; (reader, was_encrypted)."""
    try:
        reader = PdfReader(path, strict=False)
        encrypted = reader.is_encrypted
    except (PyPdfError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError,
            OSError, AssertionError) as exc:
        raise errors.failed(errors.PDF_INVALID, "The PDF cannot be read.", reason=errors.describe(exc)) from None
    if encrypted:
        try:
            opened = reader.decrypt("")
        except (DependencyError, NotImplementedError) as exc:
            raise errors.failed(errors.PDF_ENCRYPTED, "The PDF is encrypted with a method that cannot be opened.",
                                reason=errors.describe(exc)) from None
        except Exception as exc:
            raise errors.failed(errors.PDF_INVALID, "The PDF's encryption data cannot be read.",
                                reason=errors.describe(exc)) from None
        if opened == PasswordType.NOT_DECRYPTED:
            raise errors.failed(errors.PDF_ENCRYPTED, "The PDF is protected by a password.")
    return reader, encrypted


def _page_box(page) -> tuple[float | None, float | None]:
    try:
        box = page.mediabox
        return round(float(box.width), 2), round(float(box.height), 2)
    except Exception:
        return None, None


def _ocr_page(page, ocr, settings: ReportSettings) -> str:
    """OCR of a page's images (top-level XObjects), each size-checked before it is decoded."""
    texts = []
    resources = page.get("/Resources")
    resources = resources.get_object() if resources is not None else None
    xobjects = resources.get("/XObject") if resources is not None else None
    if xobjects is None:
        return ""
    xobjects = xobjects.get_object()
    for name in list(xobjects.keys())[:20]:
        xobject = xobjects[name].get_object()
        if xobject.get("/Subtype") != "/Image":
            continue
        try:
            pixels = int(xobject.get("/Width", 0)) * int(xobject.get("/Height", 0))
        except (TypeError, ValueError):
            continue
        if not pixels or pixels > settings.image_max_pixels:
            continue
        image = page.images[name].image
        if image is not None:
            texts.append(ocr(image) or "")
    return "\n".join(t for t in texts if t.strip())


def analyze_pdf(path, settings: ReportSettings, progress, check_cancelled, ocr=None) -> dict:
    reader, encrypted = _open(path)
    try:
        page_count = len(reader.pages)
    except Exception as exc:
        raise errors.failed(errors.PDF_INVALID, "The PDF's page tree cannot be read.",
                            reason=errors.describe(exc)) from None
    if page_count > settings.pdf_refuse_pages:
        raise errors.failed(errors.PDF_TOO_MANY_PAGES, "The PDF has too many pages.",
                            pages=page_count, max_pages=settings.pdf_refuse_pages)
    if page_count == 0:
        raise errors.failed(errors.PDF_INVALID, "The PDF has no pages.")
    analysed = min(page_count, settings.pdf_max_pages)
    warnings: list[dict] = []
    pages: list[dict] = []
    fields: list[dict] = []
    texts: list[str] = []
    chars_kept = 0
    text_total = 0
    text_truncated = False
    sources = set()
    ocr_pages_left = settings.pdf_ocr_pages
    without_text = 0
    for index in range(analysed):
        check_cancelled()
        progress(100.0 * index / analysed, f"page {index + 1} of {analysed}")
        entry: dict[str, Any] = {"number": index + 1, "width": None, "height": None, "rotation": 0,
                                 "chars": 0, "text_source": None}
        try:
            page = reader.pages[index]
            entry["width"], entry["height"] = _page_box(page)
            entry["rotation"] = int(page.rotation or 0) % 360
            text = page.extract_text() or ""
            if not text.strip() and ocr is not None and ocr_pages_left > 0:
                ocr_pages_left -= 1
                text = _ocr_page(page, ocr, settings)
                if text.strip():
                    entry["text_source"] = "ocr"
            elif text.strip():
                entry["text_source"] = "text_layer"
        except (JobCancelled, JobFailed):
            raise
        except Exception as exc:  # one broken page (or a pypdf limit) does not sink the document
            warnings.append({"code": "PAGE_UNREADABLE",
                             "message": f"Page {index + 1} could not be read: {errors.describe(exc)}"})
            text = ""
        text = text.replace("\x00", "")
        entry["chars"] = len(text)
        if entry["text_source"]:
            sources.add(entry["text_source"])
        else:
            without_text += 1
        pages.append(entry)
        if text.strip():
            text_total += len(text) + (1 if texts else 0)
            room = settings.max_text_chars - chars_kept
            if room > 0:
                piece = ("\f" if texts else "") + text
                texts.append(piece[:room])
                chars_kept += len(texts[-1])
                text_truncated = text_truncated or len(piece) > room
            else:
                text_truncated = True
            room_fields = settings.max_fields - len(fields)
            if room_fields > 0:
                fields.extend(detect(text, {"page": index + 1}, limit=room_fields))
            elif not any(w["code"] == "FIELDS_TRUNCATED" for w in warnings):
                warnings.append({"code": "FIELDS_TRUNCATED", "message": f"Only the first {settings.max_fields} "
                                                                       "key fields are listed."})
    if analysed < page_count:
        warnings.append({"code": "PAGES_TRUNCATED",
                         "message": f"The PDF has {page_count} pages; the first {analysed} were analysed."})
    if without_text:
        hint = "no OCR was available" if ocr is None else "OCR found no text"
        warnings.append({"code": "NO_TEXT_LAYER",
                         "message": f"{without_text} page(s) have no text layer ({hint})."})
    if sources == {"text_layer"}:
        source = "text_layer"
    elif sources == {"ocr"}:
        source = "ocr"
    else:
        source = "mixed" if sources else "none"
    return {
        "pages": pages,
        "page_count": page_count,
        "pages_analysed": analysed,
        "encrypted": encrypted,
        "metadata": _metadata(reader),
        "fields": fields,
        "text": {"content": "".join(texts), "length": text_total, "truncated": text_truncated, "source": source},
        "warnings": warnings,
        "truncated": analysed < page_count or text_truncated,
        "ocr": {"available": ocr is not None},
    }
