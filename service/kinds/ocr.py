"""The ``ocr`` kind: the text of an uploaded image or PDF, page by page.

PDF pages with a real text layer are read from it (pypdf) unless ``force_ocr``; other pages are
rendered and read by the engine (PaddleOCR by default, Tesseract for Korean and as a lighter
alternative). One engine per worker process, lent to one thread at a time (service/ocr/cache.py),
and at most one OCR job per worker (per_process_limit), so the jobs spread over workers.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

from service.engine.kind import JobFailed, JobKind, TransientJobError
from service.errors import IlgunError
from service.kinds import documents
from service.ocr import EngineBusy, EngineWaitCancelled, OcrFailed, get_cache, open_document

PARAMS = {"file_id", "file_name", "engine", "lang", "force_ocr", "max_pages", "textline_orientation"}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class EngineGate:
    """The ocr kind's gate, looked at most every ``LOOK_SECONDS``.

    Why: the dispatcher asks every gate before every claim, and a finishing job of any kind
    claims the next one, so a look (file locks on every token) cost ~12 % of a worker's CPU
    under a stream of short jobs. An answer a quarter of a second old is good enough: a job
    claimed on a stale "open" waits for a token (marking the host's wanted file, so an idle
    engine elsewhere lets go), a stale "closed" leaves the job to the next claim."""
    LOOK_SECONDS = 0.25

    def __init__(self, config: Mapping[str, Any], clock=time.monotonic):
        self.config, self.clock = config, clock
        self._answer, self._looked_at = True, None

    def __call__(self) -> bool:
        now = self.clock()
        if self._looked_at is None or now - self._looked_at >= self.LOOK_SECONDS:
            tokens = get_cache(self.config).tokens
            # stamped before the look: a look that raises is retried at the next window, not at once
            self._looked_at = now
            self._answer = tokens is None or tokens.free_or_held()
        return self._answer


class OcrKind(JobKind):
    name = "ocr"
    description = "Read the text of an uploaded image or PDF (PaddleOCR or Tesseract), page by page."
    max_attempts = 2
    timeout_seconds = 1800.0
    retry_backoff_seconds = 5.0
    default_duration_seconds = 15.0
    per_process_limit = 1          # one engine per worker: a second job would only wait for it

    @property
    def global_limit(self) -> int:  # OCR jobs at once across workers: each one is a core's work
        return _cores()

    def local_gate(self, config: Mapping[str, Any]):
        """Claim OCR jobs only where an engine runs or may start (service/ocr/tokens.py): a
        worker whose engine is warm takes the next job, and no worker builds a third engine
        while two sit idle elsewhere until their TTL."""
        return EngineGate(config)

    def validate(self, params: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
        documents.check_unknown(params, PARAMS)
        engine, lang = documents.engine_choice(params, config)
        max_pages = params.get("max_pages", config.get("OCR_MAX_PAGES", 500))
        if isinstance(max_pages, bool) or not isinstance(max_pages, int) or \
                not 1 <= max_pages <= int(config.get("OCR_MAX_PAGES", 500)):
            raise documents.invalid(f"max_pages must be a whole number from 1 to {config.get('OCR_MAX_PAGES', 500)}.",
                                    "max_pages")
        out = {"file_id": documents.file_id(params), "engine": engine, "lang": lang,
               "force_ocr": documents.flag(params, "force_ocr", False), "max_pages": max_pages}
        orientation = documents.flag(params, "textline_orientation", bool(config.get("OCR_TEXTLINE_ORIENTATION")))
        if orientation:
            if engine != "paddle":
                raise documents.invalid("textline_orientation is a PaddleOCR option.", "textline_orientation")
            if not config.get("OCR_TEXTLINE_MODEL_DIR"):
                raise documents.invalid("This server has no text line orientation model (OCR_TEXTLINE_MODEL_DIR).",
                                        "textline_orientation")
            out["textline_orientation"] = True
        return out

    def run(self, ctx) -> dict:
        p = ctx.params
        path = ctx.input_file(p["file_id"])
        options = {"lang": p["lang"], **({"textline_orientation": True} if p.get("textline_orientation") else {})}
        began = time.monotonic()
        pages, engine_info, ocr_seconds = [], None, 0.0
        try:
            with open_document(path, {**ctx.config, "OCR_MAX_PAGES": p["max_pages"]}, force_ocr=p["force_ocr"],
                               truncate=True) as doc:
                ctx.note(f"{doc.kind.upper()} with {doc.page_count} page(s); reading {doc.pages_to_read}")
                for page in doc.pages():
                    ctx.check_cancelled()
                    page_began = time.monotonic()
                    if page.text is not None:
                        pages.append({"number": page.number, "source": page.source, "text": page.text, "lines": []})
                    else:
                        with get_cache(ctx.config).use(p["engine"], options, cancelled=lambda: ctx.cancelled) as eng:
                            engine_info = engine_info or {"name": eng.name, "model": eng.model}
                            lines = eng.recognize(page.image)
                        ocr_seconds += time.monotonic() - page_began
                        pages.append({"number": page.number, "source": page.source,
                                      "text": "\n".join(line.text for line in lines),
                                      "lines": [line.to_dict() for line in lines]})
                    pages[-1]["seconds"] = round(time.monotonic() - page_began, 3)
                    ctx.progress(95.0 * page.number / page.count, f"page {page.number} of {page.count}")
                truncated = doc.page_count > doc.pages_to_read
                page_count = doc.page_count
        except EngineWaitCancelled:
            ctx.check_cancelled()
            raise
        except (OcrFailed, EngineBusy) as exc:   # the engine's trouble, not the document's: once more
            raise TransientJobError(exc.code, exc.message, exc.details) from exc
        except IlgunError as exc:   # the document's own problems: a permanent failure
            raise JobFailed(exc.code, exc.message, exc.details) from exc
        text = "\n\n".join(page["text"] for page in pages)
        ctx.progress(97.0, "writing the text")
        with ctx.open_output("text.txt", "w") as f:
            f.write(text)
        result = {"file_id": p["file_id"], "file_name": p.get("file_name"), "page_count": page_count,
                  "pages_read": len(pages), "truncated": truncated,
                  "engine": engine_info or {"name": None, "model": None},
                  "ocr_pages": sum(1 for page in pages if page["source"] != "pdf-text"),
                  "seconds": round(time.monotonic() - began, 3), "ocr_seconds": round(ocr_seconds, 3),
                  "text": text, "pages": pages}
        with ctx.open_output("ocr.json", "w") as f:
            json.dump(result, f, ensure_ascii=False)
        ctx.note(f"read {len(pages)} page(s), {result['ocr_pages']} by OCR, {len(text)} characters")
        return _bounded(result, int(ctx.config.get("OCR_RESULT_MAX_LINES", 5000)))


def _bounded(result: dict, max_lines: int) -> dict:
    """The job's result is stored with the job and sent with every read of it: past
    ``max_lines`` lines the boxes stay in ocr.json only (``lines_in_result`` says so)."""
    total = sum(len(page["lines"]) for page in result["pages"])
    result["lines_in_result"] = total <= max_lines
    if total > max_lines:
        result["pages"] = [{**page, "lines": []} for page in result["pages"]]
    return result
