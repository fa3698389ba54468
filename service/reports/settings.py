"""The limits of document analysis, read once from the app config (a plain mapping).

Every limit has a default that suits a small server; each one bounds memory or time that a
hostile document could otherwise claim. Keys and meanings are listed in ``KEYS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

MiB = 1024 * 1024

# config key -> (attribute, default, meaning)
KEYS: dict[str, tuple[str, Any, str]] = {
    "REPORT_MAX_INPUT_BYTES": ("max_input_bytes", 200 * MiB, "largest input file analysed"),
    "REPORT_MAX_TEXT_CHARS": ("max_text_chars", 200_000, "characters of text kept in result.text"),
    "REPORT_MAX_FIELDS": ("max_fields", 1000, "detected key fields kept in result.fields"),
    "REPORT_XLSX_MAX_UNCOMPRESSED_BYTES": ("xlsx_max_uncompressed", 300 * MiB,
                                           "sum of the declared uncompressed sizes of an XLSX's members"),
    "REPORT_XLSX_MAX_MEMBERS": ("xlsx_max_members", 10_000, "members in an XLSX zip"),
    "REPORT_XLSX_MAX_RATIO": ("xlsx_max_ratio", 200.0,
                              "uncompressed/compressed ratio of one member (members over 1 MiB)"),
    "REPORT_XLSX_MAX_SHEETS": ("xlsx_max_sheets", 50, "sheets analysed; later ones are listed only"),
    "REPORT_XLSX_MAX_ROWS": ("xlsx_max_rows", 100_000, "rows read per sheet"),
    "REPORT_XLSX_MAX_COLUMNS": ("xlsx_max_columns", 200, "columns analysed per sheet"),
    "REPORT_XLSX_MAX_MERGED": ("xlsx_max_merged", 1000, "merged ranges listed per sheet"),
    "REPORT_XLSX_MAX_FIELD_CELLS": ("xlsx_max_field_cells", 20_000,
                                    "text cells per workbook scanned for key fields"),
    "REPORT_PDF_MAX_PAGES": ("pdf_max_pages", 500, "pages analysed; beyond it the result is truncated"),
    "REPORT_PDF_REFUSE_PAGES": ("pdf_refuse_pages", 20_000, "page count refused with PDF_TOO_MANY_PAGES"),
    "REPORT_PDF_OCR_PAGES": ("pdf_ocr_pages", 50, "pages without a text layer whose images are OCRed"),
    "REPORT_IMAGE_MAX_PIXELS": ("image_max_pixels", 40_000_000,
                                "width*height refused with IMAGE_TOO_LARGE (decoding costs ~4 bytes a pixel)"),
    "REPORT_IMAGE_MAX_EXIF_TAGS": ("image_max_exif_tags", 200, "EXIF tags listed"),
}


@dataclass(frozen=True)
class ReportSettings:
    max_input_bytes: int
    max_text_chars: int
    max_fields: int
    xlsx_max_uncompressed: int
    xlsx_max_members: int
    xlsx_max_ratio: float
    xlsx_max_sheets: int
    xlsx_max_rows: int
    xlsx_max_columns: int
    xlsx_max_merged: int
    xlsx_max_field_cells: int
    pdf_max_pages: int
    pdf_refuse_pages: int
    pdf_ocr_pages: int
    image_max_pixels: int
    image_max_exif_tags: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> "ReportSettings":
        config = config or {}
        values = {}
        for key, (attr, default, _meaning) in KEYS.items():
            value = config.get(key, default)
            values[attr] = float(value) if isinstance(default, float) else int(value)
        return cls(**values)

