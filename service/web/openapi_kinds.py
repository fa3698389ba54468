"""The params of the document kinds (``ocr``, ``report``) for the OpenAPI document, as their
validate() checks them (service/kinds/ocr.py, report.py, documents.py)."""
from __future__ import annotations

_FILE_ID = {"type": "string", "format": "uuid", "description": "One of your uploads (POST /api/v1/files); another "
                                                               "user's or a deleted one answers 404 `FILE_NOT_FOUND`."}
_FILE_NAME = {"type": "string", "description": "Set by the server from the upload (what you send is replaced)."}
_ENGINE = {"type": "string", "enum": ["paddle", "tesseract"],
           "description": "OCR engine (default OCR_ENGINE, paddle). Asking for one this server has not installed "
                          "answers 400 `OCR_ENGINE_UNAVAILABLE`, naming what to install."}
_LANG = {"type": "string", "pattern": r"^[A-Za-z][A-Za-z_]{1,30}(\+[A-Za-z][A-Za-z_]{1,30}){0,5}$",
         "nullable": True,
         "description": "Tesseract language codes, e.g. `eng`, `kor`, `eng+kor`. PaddleOCR's model reads eng, "
                        "chi_sim, chi_tra and jpn, not kor. A language not installed answers 400 "
                        "`OCR_LANGUAGE_UNAVAILABLE` naming the package (e.g. `apt-get install tesseract-ocr-kor`)."}


def _obj(properties: dict, description: str) -> dict:
    return {"type": "object", "properties": properties, "required": ["file_id"], "additionalProperties": False,
            "description": description + " Unknown keys are refused (400 `VALIDATION_ERROR`)."}


def document_kind_params(max_pages: int = 500) -> dict[str, dict]:
    ocr = _obj({
        "file_id": _FILE_ID, "file_name": _FILE_NAME, "engine": _ENGINE, "lang": _LANG,
        "force_ocr": {"type": "boolean", "default": False,
                      "description": "OCR every PDF page, even one with a text layer."},
        "max_pages": {"type": "integer", "minimum": 1, "maximum": max_pages,
                      "description": "Read at most this many pages (result `truncated` when there are more)."},
        "textline_orientation": {"type": "boolean", "default": False,
                                 "description": "PaddleOCR's text line orientation classifier (needs "
                                                "OCR_TEXTLINE_MODEL_DIR; off: it flips upright lines)."},
    }, "Params of `ocr`: an image (PNG, JPEG, TIFF, WebP, BMP) or PDF upload. Result: `text`, `pages` (per page "
       "`text`, `source` pdf-text | pdf-render | image, `lines` with `box` (4 corners) and `confidence`), "
       "`engine`, timings, `lines_in_result` (false past OCR_RESULT_MAX_LINES lines: the boxes are then only in "
       "ocr.json); files `text.txt` and `ocr.json`.")
    report = _obj({
        "file_id": _FILE_ID, "file_name": _FILE_NAME,
        "ocr": {"type": "boolean", "default": True,
                "description": "Read images and text-less PDF pages with OCR."},
        "engine": _ENGINE, "lang": _LANG,
        "include_gps": {"type": "boolean", "default": False,
                        "description": "Put an image's EXIF location in `result.private.gps` and the reports "
                                       "(otherwise only `image.has_gps`)."},
    }, "Params of `report`: an XLSX/XLSM, PDF or image upload. Result: docs/report_schema.json (`source`, "
       "`summary`, `fields`, `text`, `warnings`, and `sheets`, `pages` or `image`); files `report.json`, "
       "`report.html`, `report.xlsx`.")
    return {"ocr": ocr, "report": report}


def crawl_kind_params(url_pattern: str, config_max_pages: int = 10000) -> dict:
    url = {"type": "string", "minLength": 1, "maxLength": 2048, "pattern": url_pattern,
           "description": "An http(s) start URL, checked like `download`'s url (private addresses refused "
                          "unless ILGUN_ALLOW_PRIVATE_URLS)."}
    patterns = {"type": "array", "maxItems": 20, "items": {"type": "string", "minLength": 1, "maxLength": 500}}
    selector = {"type": "string", "minLength": 1, "maxLength": 500,
                "description": "A CSS selector (BeautifulSoup/soupsieve); `sel@attr` reads an attribute instead "
                               "of the text."}
    return {
        "type": "object", "additionalProperties": False,
        "oneOf": [{"required": ["url"]}, {"required": ["urls"]}],
        "description": "Params of `crawl`: give `url` or `urls`. One crawl per user at a time: another while one "
                       "is queued or running answers 409 `CRAWL_ALREADY_RUNNING`. Result: `pages`, `ok`, "
                       "`errors`, `retries`, `skipped` (robots, offsite, excluded, not_included, trap, max_depth, "
                       "max_pages, not_html), `status_counts`, `bytes`, `duration_seconds`, `pages_per_second`, "
                       "`partial` (true when cancelled: the pages so far are kept); files `pages.jsonl` and "
                       "`pages.csv`. Unknown keys are refused (400 `VALIDATION_ERROR`).",
        "properties": {
            "url": url, "urls": {"type": "array", "minItems": 1, "maxItems": 20, "items": url},
            "max_pages": {"type": "integer", "minimum": 1, "maximum": config_max_pages,
                          "description": "Pages fetched at most (default CRAWL_DEFAULT_MAX_PAGES, 500)."},
            "max_depth": {"type": "integer", "minimum": 0,
                          "description": "Links followed from a start URL at most (default 5; 0: start pages only)."},
            "allowed_domains": {"type": "array", "maxItems": 50, "items": {"type": "string"},
                                "description": "Follow links to these domains and their subdomains (default: the "
                                               "start URLs' hosts, any port)."},
            "include": {**patterns, "description": "RE2 regular expressions: a link is followed only if one matches."},
            "exclude": {**patterns, "description": "RE2 regular expressions: a link that matches one is not followed."},
            "extract": {"type": "object", "maxProperties": 30,
                        "additionalProperties": {"anyOf": [selector, {
                            "type": "object", "additionalProperties": False, "required": ["selector"],
                            "properties": {"selector": selector, "all": {"type": "boolean", "default": False}}}]},
                        "description": "name: selector, applied to every page: the first match (or null), or a "
                                       "list of every match with `all`."},
            "respect_robots": {"type": "boolean", "default": True},
            "delay": {"type": "number", "minimum": 0, "maximum": 60,
                      "description": "Seconds between request starts to one host (default CRAWL_DEFAULT_DELAY, 0.25; "
                                     "robots.txt Crawl-delay raises it)."},
            "concurrency": {"type": "integer", "minimum": 1,
                            "description": "Fetches in flight in this crawl (default 4, at most CRAWL_MAX_CONCURRENCY)."},
        },
    }


_LEVELS = ["A1", "A2", "B1", "B2", "C1", "C2"]


def cefr_kind_params(max_chars: int) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["text"],
            "properties": {"text": {"type": "string", "minLength": 1, "maxLength": max_chars,
                                    "description": "English text, any length up to CEFR_MAX_TEXT_CHARS."}},
            "description": "Params of `cefr`. Result: CefrResult (files: `cefr.json` when the text has more than 200 "
                           "sentences). A missing model answers 503 `CEFR_MODEL_MISSING` at submit. Unknown keys are "
                           "refused (400 `VALIDATION_ERROR`)."}


def cefr_schemas(sync_max_chars: int) -> dict:
    scores = {"type": "object", "required": _LEVELS, "additionalProperties": False,
              "properties": {lv: {"type": "number", "minimum": 0, "maximum": 1} for lv in _LEVELS}}
    return {
        "CefrText": {"type": "object", "required": ["text"], "additionalProperties": False,
                     "properties": {"text": {"type": "string", "minLength": 1, "maxLength": sync_max_chars}}},
        "CefrResult": {
            "type": "object", "additionalProperties": True,
            "required": ["level", "scores", "method", "sentence_count", "sentences", "model", "cached"],
            "properties": {
                "level": {"type": "string", "enum": _LEVELS}, "scores": scores,
                "expected_level": {"type": "number", "nullable": True, "description": "1.0 = A1 … 6.0 = C2."},
                "method": {"type": "string", "description": "How the sentences' grades make the text's."},
                "sentence_count": {"type": "integer"}, "words": {"type": "integer"},
                "truncated": {"type": "boolean"},
                "sentences": {"type": "array", "items": {"type": "object", "properties": {
                    "text": {"type": "string"}, "level": {"type": "string", "enum": _LEVELS}, "scores": scores}}},
                "model": {"type": "object", "additionalProperties": True,
                          "description": "The model's folder, name and dev figures (`dev`: exact_accuracy, "
                                         "within_one_accuracy, macro_f1)."},
                "cached": {"type": "boolean", "description": "Answered from this worker's cache of graded texts."},
            }},
    }


def cefr_paths(ok, err, ref, op, std, body_codes) -> dict:
    return {"/api/v1/cefr": {"post": op("jobs", "Grade a short text by CEFR level now", {
        "200": ok("The grade (the `cefr` kind's result).", ref("CefrResult")),
        "400": err(400, ["VALIDATION_ERROR", *body_codes], "No text, or longer than CEFR_SYNC_MAX_CHARS "
                   "(submit a `cefr` job for long texts)."),
        **std(),
        "503": err(503, ["CEFR_MODEL_MISSING", "EXECUTOR_BUSY", "CEFR_TIMEOUT", "NO_EXECUTOR"],
                   "No model installed, every executor slot of the worker busy, or no answer within "
                   "CEFR_SYNC_TIMEOUT: retry or submit a `cefr` job."),
    }, op_id="gradeCefr", description="Runs in one of the answering worker's executor slots, never on the request "
                                      "thread; identical texts are answered from that worker's cache.",
        body={"required": True, "content": {"application/json": {"schema": ref("CefrText")}}})}}
