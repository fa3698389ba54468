"""The JSON Schema (draft 2020-12) of ``analyze``'s result, the same for every source type.

This dict is the source; ``docs/report_schema.json`` is its copy for readers, regenerated with
``python -m service.reports.schema > docs/report_schema.json`` (a test checks they match).

Top level: ``schema_version``, ``source`` (type, category, name, size, sha256, mime),
``summary`` (metadata, counts, flags: the same keys for every type, null where they do not
apply), ``fields`` (detected key fields), ``text``, ``warnings``; then ``pages`` (PDF),
``sheets`` + ``sheet_names`` (workbooks) or ``image`` (images); ``private`` only when the caller
asked for an image's GPS location. ``image.exif`` cannot hold a GPS tag: the schema forbids it.
"""
from __future__ import annotations

import json
import sys

_STR_OR_NULL = {"type": ["string", "null"]}
_INT_OR_NULL = {"type": ["integer", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
_DECIMAL = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}
_IMAGE_TYPES = ["png", "jpeg", "tiff", "webp", "bmp"]


def _object(properties: dict, required: list[str] | None = None, **extra) -> dict:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required,
            "additionalProperties": False, **extra}


_DEFS = {
    "warning": _object({
        "code": {"type": "string", "pattern": "^[A-Z][A-Z_]*$",
                 "description": "Stable: SHEET_TRUNCATED, SHEETS_TRUNCATED, MERGED_TRUNCATED, "
                                "FORMULAS_NOT_CALCULATED, PAGES_TRUNCATED, PAGE_UNREADABLE, NO_TEXT_LAYER, "
                                "NO_OCR, FIRST_FRAME_ONLY, FIELDS_TRUNCATED"},
        "message": {"type": "string"},
    }),
    "position": _object({
        "page": {"type": "integer", "minimum": 1},
        "sheet": {"type": "string"},
        "cell": {"type": "string", "pattern": "^[A-Z]{1,3}[0-9]+$"},
        "line": {"type": "integer", "minimum": 1, "description": "1-based line within the page, text or cell"},
        "column": {"type": "integer", "minimum": 0, "description": "0-based offset within the line"},
    }, required=["column"]),
    "field": {
        **_object({
            "type": {"enum": ["date", "money", "email", "phone", "reference", "pair"]},
            "text": {"type": "string", "description": "as found in the source"},
            "value": {"type": "string", "description": "normalised: ISO date, '<amount> <currency>', "
                                                      "lower-cased email domain, '+digits' or digits, the id, the value"},
            "position": {"$ref": "#/$defs/position"},
            "amount": {**_DECIMAL, "description": "money: a decimal string, never a float"},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "symbol": {"type": "string"},
            "label": {"enum": ["invoice", "purchase_order", "order", "reference", "receipt", "quote",
                               "transaction", "booking"]},
            "key": {"type": "string"},
            "ambiguous": {"type": "boolean", "description": "date: day and month could be swapped"},
        }, required=["type", "text", "value", "position"]),
        "allOf": [
            {"if": {"properties": {"type": {"const": "money"}}},
             "then": {"required": ["amount", "currency", "symbol"]}},
            {"if": {"properties": {"type": {"const": "reference"}}}, "then": {"required": ["label"]}},
            {"if": {"properties": {"type": {"const": "pair"}}}, "then": {"required": ["key"]}},
            {"if": {"properties": {"type": {"const": "date"}}},
             "then": {"properties": {"value": {"format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"}}}},
        ],
    },
    "text": _object({
        "content": {"type": "string", "description": "PDF pages are separated by form feeds"},
        "length": {**_COUNT, "description": "characters before truncation"},
        "truncated": {"type": "boolean"},
        "source": {"enum": ["text_layer", "ocr", "mixed", "none"]},
    }),
    "page": _object({
        "number": {"type": "integer", "minimum": 1},
        "width": {"type": ["number", "null"], "description": "points"},
        "height": {"type": ["number", "null"]},
        "rotation": {"type": "integer"},
        "chars": _COUNT,
        "text_source": {"enum": ["text_layer", "ocr", None]},
    }),
    "number_stats": _object({
        "count": _COUNT, "sum": {"type": "number"}, "mean": {"type": "number"},
        "min": {"type": "number"}, "max": {"type": "number"},
    }),
    "date_range": _object({
        "count": _COUNT, "min": {"type": "string"}, "max": {"type": "string"},
    }),
    "column": _object({
        "index": {"type": "integer", "minimum": 1},
        "letter": {"type": "string", "pattern": "^[A-Z]{1,3}$"},
        "header": _STR_OR_NULL,
        "type": {"enum": ["integer", "number", "date", "time", "bool", "text", "mixed", "empty"]},
        "count": {**_COUNT, "description": "non-blank data cells"},
        "blanks": _COUNT,
        "formulas": _COUNT,
        "formulas_without_value": _COUNT,
        "errors": {**_COUNT, "description": "cells holding an error such as #DIV/0!"},
        "types": {"type": "object", "additionalProperties": _COUNT,
                  "propertyNames": {"enum": ["integer", "decimal", "date", "time", "bool", "text"]}},
        "numeric": {"oneOf": [{"type": "null"}, {"$ref": "#/$defs/number_stats"}]},
        "dates": {"oneOf": [{"type": "null"}, {"$ref": "#/$defs/date_range"}]},
        "text_max_length": _COUNT,
        "bools": _object({"true": _COUNT, "false": _COUNT}),
    }, required=["index", "letter", "header", "type", "count", "blanks", "formulas", "formulas_without_value",
                 "errors", "types", "numeric", "dates"]),
    "sheet": _object({
        "name": {"type": "string"},
        "index": _COUNT,
        "state": {"enum": ["visible", "hidden", "veryHidden"]},
        "dimensions": {**_STR_OR_NULL, "description": "as declared by the file"},
        "rows": {**_COUNT, "description": "last row holding a value"},
        "columns_count": {**_COUNT, "description": "last column holding a value"},
        "rows_analysed": _COUNT,
        "columns_analysed": _COUNT,
        "truncated": {"type": "boolean"},
        "header_row": {"type": ["integer", "null"], "minimum": 1},
        "data_rows": _COUNT,
        "cells": _COUNT,
        "blanks": _COUNT,
        "formulas": _COUNT,
        "merged": _object({"count": _COUNT, "ranges": {"type": "array", "items": {"type": "string"}}}),
        "columns": {"type": "array", "items": {"$ref": "#/$defs/column"}},
    }),
    "image": _object({
        "format": {"type": "string"},
        "width": {"type": "integer", "minimum": 1},
        "height": {"type": "integer", "minimum": 1},
        "mode": {"type": "string"},
        "dpi": {"oneOf": [{"type": "null"}, {"type": "array", "items": {"type": "number"}, "maxItems": 2}]},
        "frames": {"type": "integer", "minimum": 1},
        "animated": {"type": "boolean"},
        "has_icc_profile": {"type": "boolean"},
        "has_exif": {"type": "boolean"},
        "has_gps": {"type": "boolean", "description": "the location itself is only in private.gps, on request"},
        "exif": {"type": "object", "propertyNames": {"not": {"pattern": "^GPS"}},
                 "additionalProperties": {"not": {"type": "object"}}},
    }),
    "private": _object({
        "gps": _object({
            "latitude": {"type": ["number", "null"]},
            "longitude": {"type": ["number", "null"]},
            "altitude": {"type": ["number", "null"]},
            "raw": {"type": "object"},
        }),
    }, required=[]),
}

SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://ilgun.invalid/schemas/report-result.json",
    "title": "ilgun report result",
    "description": "The result of the report job kind for an XLSX/XLSM workbook, a PDF or an image.",
    **_object({
        "schema_version": {"const": 1},
        "source": _object({
            "type": {"enum": ["xlsx", "pdf", *_IMAGE_TYPES], "description": "from the content, not the name"},
            "category": {"enum": ["spreadsheet", "document", "image"]},
            "name": _STR_OR_NULL,
            "size": _COUNT,
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "mime": {"type": "string"},
        }),
        "summary": _object({
            "title": _STR_OR_NULL, "author": _STR_OR_NULL, "subject": _STR_OR_NULL,
            "creator": _STR_OR_NULL, "producer": _STR_OR_NULL,
            "created": {**_STR_OR_NULL, "description": "ISO 8601"},
            "modified": {**_STR_OR_NULL, "description": "ISO 8601"},
            "page_count": _INT_OR_NULL, "pages_analysed": _INT_OR_NULL,
            "sheet_count": _INT_OR_NULL, "sheets_analysed": _INT_OR_NULL,
            "width": _INT_OR_NULL, "height": _INT_OR_NULL,
            "encrypted": {"type": "boolean", "description": "a PDF that opened with the empty password"},
            "ocr_available": {"type": "boolean"},
            "field_counts": _object({k: _COUNT for k in ("date", "money", "email", "phone", "reference", "pair")}),
            "text_chars": _COUNT,
            "truncated": {"type": "boolean", "description": "a cap was reached; see warnings"},
        }),
        "fields": {"type": "array", "items": {"$ref": "#/$defs/field"}},
        "text": {"$ref": "#/$defs/text"},
        "warnings": {"type": "array", "items": {"$ref": "#/$defs/warning"}},
        "pages": {"type": "array", "items": {"$ref": "#/$defs/page"}},
        "sheets": {"type": "array", "items": {"$ref": "#/$defs/sheet"}},
        "sheet_names": {"type": "array", "items": {"type": "string"}},
        "image": {"$ref": "#/$defs/image"},
        "private": {"$ref": "#/$defs/private"},
    }, required=["schema_version", "source", "summary", "fields", "text", "warnings"]),
    "allOf": [
        {"if": {"properties": {"source": {"properties": {"type": {"const": "pdf"}}}}},
         "then": {"required": ["pages"], "not": {"anyOf": [{"required": ["sheets"]}, {"required": ["image"]}]}}},
        {"if": {"properties": {"source": {"properties": {"type": {"const": "xlsx"}}}}},
         "then": {"required": ["sheets", "sheet_names"],
                  "not": {"anyOf": [{"required": ["pages"]}, {"required": ["image"]}]}}},
        {"if": {"properties": {"source": {"properties": {"type": {"enum": _IMAGE_TYPES}}}}},
         "then": {"required": ["image"], "not": {"anyOf": [{"required": ["pages"]}, {"required": ["sheets"]}]}}},
    ],
    "$defs": _DEFS,
}


def validate(result: dict) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``result`` matches. jsonschema is a test and
    tooling dependency, so it is imported only here."""
    import jsonschema

    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(result)


def schema_json() -> str:
    return json.dumps(SCHEMA, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_json())
