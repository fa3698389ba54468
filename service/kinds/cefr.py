"""The ``cefr`` kind: English text graded A1..C2 (service/cefr/classifier.py).

Params: ``text`` (required, at most CEFR_MAX_TEXT_CHARS characters). Result: ``level``,
``scores`` (all six levels), ``expected_level`` (1.0 = A1 .. 6.0 = C2), ``method``,
``sentence_count``, ``words``, ``sentences`` (per sentence: text, level, scores; the first 200,
all of them in ``cefr.json`` when there are more), ``model`` (which model, its dev figures),
``cached``. Failure: CEFR_MODEL_MISSING when no model is installed (checked at submit too).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from service.cefr import classifier
from service.engine.kind import JobFailed, JobKind
from service.errors import ValidationError


def check_text(params: Mapping[str, Any], limit: int) -> str:
    unknown = sorted(set(params) - {"text"})
    if unknown:
        raise ValidationError(f"Unknown parameter {unknown[0]!r}.", details={"field": unknown[0]})
    text = params.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValidationError("text is required: a non-empty string.", details={"field": "text"})
    if len(text) > limit:
        raise ValidationError(f"text is longer than {limit} characters.", details={"field": "text", "limit": limit})
    return text


class CefrKind(JobKind):
    name = "cefr"
    description = "Grade English text by CEFR level (A1..C2) with the configured transformers model."
    max_attempts = 2
    timeout_seconds = 600.0
    default_duration_seconds = 1.0

    def validate(self, params: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
        text = check_text(params, int(config.get("CEFR_MAX_TEXT_CHARS", 200_000)))
        classifier.check_model(config)  # a missing model is refused now, not after a wait in the queue
        return {"text": text}

    def run(self, ctx) -> dict:
        try:
            result = classifier.grade(
                ctx.config, ctx.params["text"], cancelled=lambda: ctx.cancelled,
                progress=lambda done, total: ctx.progress(100.0 * done / total, f"{done} of {total} sentences"))
        except classifier.CefrModelMissing as exc:
            raise JobFailed(exc.code, exc.message, exc.details) from exc
        ctx.check_cancelled()
        sentences = result["sentences"]
        if len(sentences) > classifier.MAX_RESULT_PIECES:
            with ctx.open_output("cefr.json", "wb") as out:
                out.write(json.dumps(result, ensure_ascii=False, indent=1).encode())
            result = {**result, "sentences": sentences[:classifier.MAX_RESULT_PIECES], "sentences_in_result": False}
        return result
