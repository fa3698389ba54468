"""Input files as a sequence of pages: each either text already (a PDF's text layer) or an
image to OCR. ``open_document`` checks what can be checked up front (type, size, encryption,
page count) so a bad file fails before any OCR; ``Document.pages()`` then yields one page at a
time, so a kind reports progress and checks for cancel between pages and holds one page
image in memory at a time.

Limits: an image may have at most ``OCR_MAX_IMAGE_PIXELS`` pixels (IMAGE_TOO_LARGE; checked
from the header before decoding, so a decompression bomb costs nothing). A PDF page is rendered
at ``OCR_PDF_DPI``, lowered for an oversized page so it stays within the same pixel limit.
A document with more than ``OCR_MAX_PAGES`` pages fails with TOO_MANY_PAGES, or with
``truncate=True`` is read up to the limit and flagged ``truncated``.

PDFium is not thread-safe, not even across different documents, and executor threads of
several jobs render at once: every pypdfium2 call goes through ``PDFIUM_LOCK``, and documents
and pages are closed explicitly (under it) rather than left to finalizers on any thread.
"""
from __future__ import annotations

import math
import threading
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from PIL import Image, ImageOps, UnidentifiedImageError

from service.ocr.errors import (ImageInvalid, ImageTooLarge, PdfEncrypted, PdfInvalid, TooManyPages,
                                UnsupportedDocument)

PDFIUM_LOCK = threading.Lock()
# Pillow decoders ilgun accepts: others (EPS runs Ghostscript, PSD, ICNS...) are attack surface.
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF")
MULTIPAGE_FORMATS = ("TIFF",)  # frames are pages; a GIF's or WebP's frames are animation
PDF_HEADER_WINDOW = 1024       # readers accept "%PDF-" anywhere in the first KiB


@dataclass(frozen=True)
class PageSettings:
    max_pixels: int = 60_000_000       # a page image's pixels: A4 at 600 dpi is 35 M
    max_pages: int = 500
    dpi: int = 150
    text_min_chars: int = 20           # a text layer counts with at least this many letters/digits…
    text_min_printable: float = 0.9    # …and at least this share of printable characters

    @classmethod
    def from_config(cls, config: Mapping, **overrides) -> "PageSettings":
        values = dict(max_pixels=int(config.get("OCR_MAX_IMAGE_PIXELS", cls.max_pixels)),
                      max_pages=int(config.get("OCR_MAX_PAGES", cls.max_pages)),
                      dpi=int(config.get("OCR_PDF_DPI", cls.dpi)),
                      text_min_chars=int(config.get("OCR_PDF_TEXT_MIN_CHARS", cls.text_min_chars)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class Page:
    number: int                  # 1-based
    count: int                   # pages this document will yield
    source: str                  # "image", "pdf-text" (its text layer) or "pdf-render" (to OCR)
    image: Image.Image | None = None
    text: str | None = None
    dpi: float | None = None

    @property
    def needs_ocr(self) -> bool:
        return self.text is None


def real_text(text: str, settings: PageSettings) -> bool:
    """Whether a text layer is worth using instead of OCR: enough letters and digits (a page
    whose only text is a page number or a scanner's stamp is still a scan) and mostly printable
    (a font without a Unicode map extracts as control characters, U+FFFD or private-use glyphs)."""
    chars = [c for c in text if not c.isspace()]
    if sum(c.isalnum() for c in chars) < settings.text_min_chars:
        return False
    bad = sum(1 for c in chars if c == "\ufffd" or unicodedata.category(c) in ("Cc", "Co", "Cn", "Cs"))
    return (len(chars) - bad) / len(chars) >= settings.text_min_printable


def _clean_text(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


class Document:
    kind = ""
    page_count = 0     # pages in the file
    truncated = False  # more pages than max_pages: only the first max_pages are yielded

    @property
    def pages_to_read(self) -> int:
        return min(self.page_count, self.settings.max_pages)

    def pages(self) -> Iterator[Page]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _check_page_count(self, truncate: bool) -> None:
        if self.page_count > self.settings.max_pages:
            if not truncate:
                raise TooManyPages(f"The document has {self.page_count} pages; at most "
                                   f"{self.settings.max_pages} are allowed.",
                                   details={"pages": self.page_count, "max_pages": self.settings.max_pages})
            self.truncated = True


class ImageDocument(Document):
    kind = "image"

    def __init__(self, path: Path, settings: PageSettings, truncate: bool):
        self.settings = settings
        try:
            with warnings.catch_warnings():
                # our own pixel limit decides; Pillow's global one still raises beyond twice its value
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                self._img = Image.open(path, formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"The image is too large: {exc}") from None
        except UnidentifiedImageError:
            raise UnsupportedDocument() from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageInvalid(f"The image cannot be read: {exc}") from None
        self.format = self._img.format
        frames = getattr(self._img, "n_frames", 1) if self.format in MULTIPAGE_FORMATS else 1
        self.page_count = frames
        self._check_page_count(truncate)
        for i in range(self.pages_to_read):  # headers only: seek() decodes no pixels
            self._seek(i)
            width, height = self._img.size
            if width * height > settings.max_pixels:
                self.close()
                raise ImageTooLarge(f"Page {i + 1} is {width}×{height} pixels; at most "
                                    f"{settings.max_pixels} pixels are allowed.",
                                    details={"page": i + 1, "width": width, "height": height,
                                             "max_pixels": settings.max_pixels})

    def _seek(self, i: int) -> None:
        try:
            self._img.seek(i)
        except (EOFError, OSError, ValueError) as exc:
            raise ImageInvalid(f"Frame {i + 1} of the image cannot be read: {exc}") from None

    def pages(self) -> Iterator[Page]:
        count = self.pages_to_read
        for i in range(count):
            self._seek(i)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    frame = self._img.copy()  # decodes this frame only
                frame = ImageOps.exif_transpose(frame)  # phone photos are stored sideways plus a tag
            except (OSError, ValueError, SyntaxError) as exc:
                raise ImageInvalid(f"Page {i + 1} of the image cannot be decoded: {exc}") from None
            dpi = self._img.info.get("dpi")
            dpi = float(dpi[0]) if isinstance(dpi, tuple) and dpi[0] else None
            if dpi:
                frame.info["dpi"] = (dpi, dpi)
            yield Page(i + 1, count, "image", image=frame, dpi=dpi)

    def close(self) -> None:
        self._img.close()


class PdfDocument(Document):
    kind = "pdf"

    def __init__(self, path: Path, settings: PageSettings, truncate: bool, force_ocr: bool):
        import pypdf
        from pypdf.errors import DependencyError
        self.settings, self.path, self.force_ocr = settings, path, force_ocr
        self._pdfium_doc = None
        self._password: str | None = None
        try:
            self._reader = pypdf.PdfReader(str(path), strict=False)
            if self._reader.is_encrypted:
                # many PDFs are encrypted with an empty user password (only printing or copying
                # is restricted): those open with ""
                try:
                    opened = self._reader.decrypt("")
                except DependencyError as exc:
                    raise PdfEncrypted(f"The PDF is encrypted with an algorithm this server cannot read: {exc}") from None
                if not opened:
                    raise PdfEncrypted(details={"hint": "Remove the password and upload the PDF again."})
                self._password = ""
            self.page_count = len(self._reader.pages)
        except (PdfEncrypted, PdfInvalid):
            raise
        except Exception as exc:  # pypdf raises many types on broken files (PdfReadError, KeyError, ...)
            raise PdfInvalid(f"The PDF cannot be read: {type(exc).__name__}: {exc}") from None
        if self.page_count == 0:
            raise PdfInvalid("The PDF has no pages.")
        self._check_page_count(truncate)

    def pages(self) -> Iterator[Page]:
        count = self.pages_to_read
        for i in range(count):
            if not self.force_ocr:
                text = self._text_layer(i)
                if text is not None and real_text(text, self.settings):
                    yield Page(i + 1, count, "pdf-text", text=_clean_text(text))
                    continue
            image, dpi = self._render(i)
            yield Page(i + 1, count, "pdf-render", image=image, dpi=dpi)

    def _text_layer(self, i: int) -> str | None:
        try:
            return self._reader.pages[i].extract_text()
        except Exception:  # a broken content stream: the rendered page may still be readable
            return None

    def _render(self, i: int) -> tuple[Image.Image, float]:
        import pypdfium2 as pdfium
        with PDFIUM_LOCK:
            try:
                if self._pdfium_doc is None:
                    self._pdfium_doc = pdfium.PdfDocument(str(self.path), password=self._password)
                page = self._pdfium_doc[i]
                try:
                    width_pt, height_pt = page.get_size()
                    dpi = float(self.settings.dpi)
                    pixels = width_pt * height_pt * (dpi / 72) ** 2
                    if pixels > self.settings.max_pixels:  # a poster-sized page: lower the dpi to fit
                        dpi *= math.sqrt(self.settings.max_pixels / pixels)
                    bitmap = page.render(scale=dpi / 72)  # applies the page's /Rotate
                    try:
                        image = bitmap.to_pil().convert("RGB")  # a copy: the bitmap's buffer is freed below
                    finally:
                        bitmap.close()
                finally:
                    page.close()
            except pdfium.PdfiumError as exc:
                raise PdfInvalid(f"Page {i + 1} of the PDF cannot be rendered: {exc}") from None
        image.info["dpi"] = (dpi, dpi)
        return image, dpi

    def close(self) -> None:
        with PDFIUM_LOCK:
            if self._pdfium_doc is not None:
                self._pdfium_doc.close()
                self._pdfium_doc = None
        stream = getattr(self._reader, "stream", None)
        if stream is not None and hasattr(stream, "close"):
            stream.close()


def is_pdf(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"%PDF-" in f.read(PDF_HEADER_WINDOW)


def open_document(path, config: Mapping | None = None, *, settings: PageSettings | None = None,
                  force_ocr: bool = False, truncate: bool = False) -> Document:
    """An image or PDF file as a Document (use it in a ``with`` block). Raises the domain errors
    UNSUPPORTED_FILE_TYPE, IMAGE_INVALID, IMAGE_TOO_LARGE, PDF_ENCRYPTED, PDF_INVALID, TOO_MANY_PAGES."""
    path = Path(path)
    settings = settings or PageSettings.from_config(config or {})
    if is_pdf(path):
        return PdfDocument(path, settings, truncate, force_ocr)
    return ImageDocument(path, settings, truncate)
