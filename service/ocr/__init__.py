"""OCR for job kinds (``ocr``, ``report``): engines, a per-process engine cache, and input
files as pages. Flask-free: everything here runs on executor threads.

A kind's run() would do, roughly::

    with open_document(path, ctx.config, force_ocr=p["force_ocr"]) as doc:
        for page in doc.pages():
            ctx.check_cancelled()
            if page.needs_ocr:
                with get_cache(ctx.config).use(p["engine"], {"lang": p["lang"]},
                                               cancelled=lambda: ctx.cancelled) as engine:
                    lines = engine.recognize(page.image)
            ctx.progress(100 * page.number / page.count, f"page {page.number}/{page.count}")

and check_available(engine, lang, config) in validate() on the request thread.
"""
from service.ocr.available import available_engines, check_available
from service.ocr.cache import EngineCache, get_cache
from service.ocr.engines import OcrEngine, OcrLine, PaddleEngine, TesseractEngine
from service.ocr.errors import (EngineBusy, EngineWaitCancelled, ImageInvalid, ImageTooLarge,
                                OcrEngineUnavailable, OcrFailed, OcrLanguageUnavailable, PdfEncrypted,
                                PdfInvalid, TooManyPages, UnsupportedDocument)
from service.ocr.pages import Document, Page, PageSettings, open_document

__all__ = [
    "available_engines", "check_available", "EngineCache", "get_cache", "OcrEngine", "OcrLine",
    "PaddleEngine", "TesseractEngine", "EngineBusy", "EngineWaitCancelled", "ImageInvalid",
    "ImageTooLarge", "OcrEngineUnavailable", "OcrFailed", "OcrLanguageUnavailable", "PdfEncrypted",
    "PdfInvalid", "TooManyPages", "UnsupportedDocument", "Document", "Page", "PageSettings", "open_document",
]
