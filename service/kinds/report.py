"""The ``report`` kind: an uploaded XLSX, PDF or image → key fields and a structured report.

The analysis is service.reports (one JSON schema for every source type: docs/report_schema.json);
this module turns it into a job: the result is the analysis, the files are the same report as
JSON, HTML and XLSX. Images and text-less PDF pages are read by OCR unless ``ocr`` is false.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from service.engine.kind import JobKind
from service.kinds import documents

PARAMS = {"file_id", "file_name", "ocr", "engine", "lang", "include_gps"}


class ReportKind(JobKind):
    name = "report"
    description = "Analyse an uploaded XLSX, PDF or image: key fields and a structured report (JSON, HTML, XLSX)."
    max_attempts = 2
    timeout_seconds = 900.0
    retry_backoff_seconds = 5.0
    default_duration_seconds = 5.0

    def validate(self, params: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
        documents.check_unknown(params, PARAMS)
        out = {"file_id": documents.file_id(params), "ocr": documents.flag(params, "ocr", True),
               "include_gps": documents.flag(params, "include_gps", False)}
        if out["ocr"]:
            out["engine"], out["lang"] = documents.engine_choice(params, config)
        return out

    def run(self, ctx) -> dict:
        # imported here: openpyxl (and numpy with it) would add 0.2 s and memory to every worker's start
        from service.reports import analyze, render_html, write_xlsx
        p = ctx.params
        path = ctx.input_file(p["file_id"])
        ocr = documents.ocr_text(ctx, p["engine"], p.get("lang")) if p["ocr"] else None
        result = analyze(path, ctx.config, ocr=ocr, name=p.get("file_name"), include_gps=p["include_gps"],
                         progress=lambda percent, message=None: ctx.progress(percent * 0.9, message),
                         cancelled=lambda: ctx.cancelled)
        ctx.note(f"analysed a {result['source']['type'].upper()} file: {len(result['fields'])} field(s), "
                 f"{result['text']['length']} characters of text")
        ctx.progress(92.0, "writing the report")
        with ctx.open_output("report.json", "w") as f:
            json.dump(result, f, ensure_ascii=False, indent=1)
        with ctx.open_output("report.html", "w") as f:
            f.write(render_html(result, include_private=p["include_gps"]))
        with ctx.open_output("report.xlsx", "wb") as f:
            write_xlsx(result, f, include_private=p["include_gps"])
        return result
