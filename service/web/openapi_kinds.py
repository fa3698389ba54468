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
