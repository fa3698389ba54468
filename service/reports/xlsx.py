"""Workbooks (XLSX and XLSM): sheets, sizes, header row, per-column types and statistics.

Order of work, each step bounded before the next one starts:

1. ``check_zip`` (xlsx_zip.py): the zip directory alone (no decompression) against the member count, the total
   declared uncompressed size and a per-member compression ratio. Python's zipfile never yields
   more than a member's declared size (a lying header ends in a CRC error), so checking the
   declared sizes bounds what openpyxl can later inflate.
2. Per sheet, ``scan_sheet`` (xlsx_zip.py): one streaming pass over the sheet's XML with expat (C speed, no
   tree kept), DTDs refused so no entity expansion. It finds what openpyxl's read-only mode
   cannot give: merged ranges (``ReadOnlyWorksheet`` has no ``merged_cells``), formula cells (and
   those without a cached value), error cells, and the real extent of the data (the declared
   ``<dimension>`` may lie or be absent).
3. Per sheet, openpyxl ``read_only=True, data_only=True``: the cells' values, streamed row by row
   within the row and column caps. ``data_only=True`` because the statistics should describe
   what the workbook shows (a formula's cached result), and the formula cells themselves were
   already counted in step 2, so a ``data_only=False`` pass would only repeat work. A workbook
   saved by a program that never calculates (openpyxl itself, some exporters) has formulas
   without cached values: they count as blanks and the result warns ``FORMULAS_NOT_CALCULATED``.

Header row heuristic (within the first 10 non-empty rows): the first row whose non-empty cells
are all distinct text, at least two of them (one if the table is one column wide), covering at
least half of the table's columns, and directly followed by a non-empty row that has at least one
number, date or boolean. Rows up to the header are not data. No such row: ``header_row`` is null
and every row is data. A table of text only therefore has no detected header (a deliberate
miss: guessing would be wrong as often as right).

Column types: ``integer``, ``number`` (integers and decimals), ``date``, ``time``, ``bool``,
``text``, ``empty`` (no values), ``mixed`` (values of more than one of these).
"""
from __future__ import annotations

import datetime as dt
import zipfile
from decimal import Decimal, InvalidOperation
from typing import Any

from openpyxl import load_workbook
from openpyxl.utils import get_column_letter

from service.engine.kind import JobCancelled, JobFailed
from service.reports import errors
from service.reports.fields import detect_line
from service.reports.settings import ReportSettings
from service.reports.xlsx_zip import SheetScan, check_zip, is_macro_enabled, scan_sheet

HEADER_SCAN_ROWS = 10
_CANCEL_EVERY_ROWS = 2000
_HEADER_TEXT_MAX = 100


# --- 3. values and statistics ------------------------------------------------------------

def _category(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "decimal"
    if isinstance(value, (dt.datetime, dt.date)):
        return "date"
    if isinstance(value, (dt.time, dt.timedelta)):
        return "time"
    return "text"


def _json_number(value: Decimal) -> int | float:
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def _iso(value: dt.date) -> str:
    if isinstance(value, dt.datetime) and value.time() == dt.time(0):
        return value.date().isoformat()
    return value.isoformat()


class _Column:
    def __init__(self, index: int):
        self.index = index
        self.header: str | None = None
        self.kinds: dict[str, int] = {}
        self.blanks = 0
        self.total = Decimal(0)
        self.numeric = 0
        self.low: Decimal | None = None
        self.high: Decimal | None = None
        self.first_date: dt.date | None = None
        self.last_date: dt.date | None = None
        self.text_max = 0
        self.bools = {"true": 0, "false": 0}

    def add(self, value: Any) -> None:
        kind = _category(value)
        if kind is None:
            self.blanks += 1
            return
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if kind in ("integer", "decimal"):
            try:
                # repr is the shortest text that round-trips: 0.1 + 0.2 sums to 0.3, as typed.
                number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
            except InvalidOperation:
                return
            if not number.is_finite():
                return
            self.numeric += 1
            self.total += number
            self.low = number if self.low is None else min(self.low, number)
            self.high = number if self.high is None else max(self.high, number)
        elif kind == "date":
            # Compare dates with dates: a datetime and a date do not order against each other.
            key = value if isinstance(value, dt.datetime) else dt.datetime.combine(value, dt.time(0))
            if self.first_date is None or key < self.first_date:
                self.first_date = key
            if self.last_date is None or key > self.last_date:
                self.last_date = key
        elif kind == "text":
            self.text_max = max(self.text_max, len(value))
        elif kind == "bool":
            self.bools["true" if value else "false"] += 1

    def inferred_type(self) -> str:
        kinds = set(self.kinds)
        if not kinds:
            return "empty"
        if kinds <= {"integer"}:
            return "integer"
        if kinds <= {"integer", "decimal"}:
            return "number"
        if len(kinds) == 1:
            return next(iter(kinds))
        return "mixed"

    def result(self, scan: SheetScan) -> dict:
        count = sum(self.kinds.values())
        out: dict[str, Any] = {
            "index": self.index,
            "letter": get_column_letter(self.index),
            "header": self.header,
            "type": self.inferred_type(),
            "count": count,
            "blanks": self.blanks,
            "formulas": scan.formulas.get(self.index, 0),
            "formulas_without_value": scan.uncached.get(self.index, 0),
            "errors": scan.errors.get(self.index, 0),
            "types": dict(sorted(self.kinds.items())),
            "numeric": None,
            "dates": None,
        }
        if self.numeric:
            mean = self.total / self.numeric
            out["numeric"] = {"count": self.numeric, "sum": _json_number(self.total),
                              "mean": _json_number(mean), "min": _json_number(self.low),
                              "max": _json_number(self.high)}
        if self.first_date is not None:
            out["dates"] = {"count": self.kinds.get("date", 0), "min": _iso(self.first_date),
                            "max": _iso(self.last_date)}
        if "text" in self.kinds:
            out["text_max_length"] = self.text_max
        if "bool" in self.kinds:
            out["bools"] = dict(self.bools)
        return out


def _header_text(value: Any) -> str:
    return str(value).strip()[:_HEADER_TEXT_MAX]


def detect_header(rows: list[tuple[int, tuple]], width: int) -> int | None:
    """The header's row number among the first rows (see the module's heuristic), or None."""
    non_empty = [(number, row) for number, row in rows if any(_category(v) for v in row)]
    for position, (number, row) in enumerate(non_empty[:HEADER_SCAN_ROWS]):
        values = [v for v in row if _category(v)]
        if not all(_category(v) == "text" for v in values):
            continue
        texts = [_header_text(v).casefold() for v in values]
        if len(set(texts)) != len(texts) or len(values) < min(2, width) or len(values) * 2 < width:
            continue
        if position + 1 < len(non_empty):
            following = non_empty[position + 1][1]
            if any(_category(v) not in (None, "text") for v in following):
                return number
    return None


def _sheet_member_names(workbook) -> dict[str, str]:
    """Sheet title -> zip member, from openpyxl's read-only worksheets."""
    names = {}
    for ws in workbook.worksheets:
        path = getattr(ws, "_worksheet_path", None)
        if path:
            names[ws.title] = path.lstrip("/")
    return names


def _analyze_sheet(ws, index: int, archive: zipfile.ZipFile, member: str | None,
                   settings: ReportSettings, check_cancelled, field_sink) -> tuple[dict, list[dict]]:
    warnings: list[dict] = []
    if member is None:
        raise errors.failed(errors.XLSX_INVALID, "A sheet's part is missing from the workbook.", sheet=ws.title)
    scan = scan_sheet(archive, member, settings, check_cancelled)
    rows_read = min(scan.last_row, settings.xlsx_max_rows)
    width = min(scan.last_col, settings.xlsx_max_columns)
    truncated = scan.last_row > settings.xlsx_max_rows or scan.last_col > settings.xlsx_max_columns
    columns = [_Column(i) for i in range(1, width + 1)]
    header_row = None
    data_rows = 0
    if rows_read and width:
        # The first rows wait in a small buffer until the header is decided; the rest stream.
        head: list[tuple[int, tuple]] = []
        decided = False
        rows = ws.iter_rows(min_row=1, max_row=rows_read, min_col=1, max_col=width, values_only=True)
        for number, row in enumerate(rows, start=1):
            if number % _CANCEL_EVERY_ROWS == 0:
                check_cancelled()
            field_sink(ws.title, number, row)
            if decided:
                data_rows += _take_row(columns, row, number, header_row)
                continue
            head.append((number, row))
            if len(head) >= HEADER_SCAN_ROWS * 2:
                header_row, decided = detect_header(head, width), True
                data_rows += sum(_take_row(columns, r, n, header_row) for n, r in head)
        if not decided:
            header_row = detect_header(head, width)
            data_rows += sum(_take_row(columns, r, n, header_row) for n, r in head)
        if header_row is not None:
            for column, value in zip(columns, head[header_row - 1][1]):
                column.header = _header_text(value) if _category(value) else None
    if truncated:
        warnings.append({"code": "SHEET_TRUNCATED",
                         "message": f"Sheet {ws.title!r}: only the first {rows_read} rows and {width} "
                                    "columns were analysed."})
    uncached = sum(scan.uncached.values())
    if uncached:
        warnings.append({"code": "FORMULAS_NOT_CALCULATED",
                         "message": f"Sheet {ws.title!r}: {uncached} formula cell(s) have no saved result; "
                                    "they count as blanks."})
    if scan.merged_count > len(scan.merged):
        warnings.append({"code": "MERGED_TRUNCATED",
                         "message": f"Sheet {ws.title!r}: {scan.merged_count} merged ranges, "
                                    f"{len(scan.merged)} listed."})
    dimensions = None
    try:
        dimensions = ws.calculate_dimension()
    except (ValueError, TypeError):
        pass
    sheet = {
        "name": ws.title,
        "index": index,
        "state": getattr(ws, "sheet_state", "visible") or "visible",
        "dimensions": dimensions,
        "rows": scan.last_row,
        "columns_count": scan.last_col,
        "rows_analysed": rows_read,
        "columns_analysed": width,
        "truncated": truncated,
        "header_row": header_row,
        "data_rows": data_rows,
        "cells": scan.cells,
        "blanks": sum(c.blanks for c in columns),
        "formulas": sum(scan.formulas.values()),
        "merged": {"count": scan.merged_count, "ranges": scan.merged},
        "columns": [c.result(scan) for c in columns],
    }
    return sheet, warnings


def _take_row(columns: list[_Column], row: tuple, number: int, header_row: int | None) -> int:
    if header_row is not None and number <= header_row:
        return 0
    for column, value in zip(columns, row):
        column.add(value)
    return 1


class _FieldCollector:
    """Key fields in the workbook's text cells, up to a cap of cells and of fields."""

    def __init__(self, settings: ReportSettings):
        self.cells_left = settings.xlsx_max_field_cells
        self.fields_left = settings.max_fields
        self.fields: list[dict] = []
        self.truncated = False

    def __call__(self, sheet: str, row_number: int, row: tuple) -> None:
        if self.cells_left <= 0 or self.fields_left <= 0:
            return
        for col, value in enumerate(row, start=1):
            if not isinstance(value, str) or not value.strip():
                continue
            self.cells_left -= 1
            if self.cells_left < 0:
                self.truncated = True
                return
            ref = f"{get_column_letter(col)}{row_number}"
            for number, line in enumerate(value.splitlines() or [value], start=1):
                position = {"sheet": sheet, "cell": ref}
                if number > 1:
                    position["line"] = number
                found = detect_line(line, position)
                self.fields.extend(found[: self.fields_left])
                self.fields_left -= min(len(found), self.fields_left)
                if self.fields_left <= 0:
                    self.truncated = True
                    return


def analyze_xlsx(path, settings: ReportSettings, progress, check_cancelled) -> dict:
    check_zip(path, settings)
    macro_enabled = is_macro_enabled(path)
    collector = _FieldCollector(settings)
    warnings: list[dict] = []
    sheets: list[dict] = []
    try:
        # A file object, not the path: openpyxl refuses names without an Excel extension, and
        # the type was decided from the content already.
        with open(path, "rb") as handle, zipfile.ZipFile(path) as archive:
            workbook = load_workbook(handle, read_only=True, data_only=True, keep_links=False)
            try:
                members = _sheet_member_names(workbook)
                worksheets = workbook.worksheets
                names = workbook.sheetnames
                analysed = worksheets[: settings.xlsx_max_sheets]
                if len(worksheets) > len(analysed):
                    warnings.append({"code": "SHEETS_TRUNCATED",
                                     "message": f"{len(worksheets)} sheets, the first {len(analysed)} analysed."})
                for index, ws in enumerate(analysed):
                    check_cancelled()
                    progress(100.0 * index / max(len(analysed), 1), f"sheet {index + 1} of {len(analysed)}: {ws.title}")
                    sheet, sheet_warnings = _analyze_sheet(ws, index, archive, members.get(ws.title), settings,
                                                           check_cancelled, collector)
                    sheets.append(sheet)
                    warnings.extend(sheet_warnings)
                properties = workbook.properties
            finally:
                workbook.close()
    except (JobFailed, JobCancelled):
        raise
    except Exception as exc:  # openpyxl and expat raise many types for broken input
        raise errors.failed(errors.XLSX_INVALID, "The workbook cannot be read.",
                            reason=errors.describe(exc)) from None
    if collector.truncated:
        warnings.append({"code": "FIELDS_TRUNCATED", "message": "Key fields were searched in part of the cells only."})
    metadata = {
        "title": properties.title, "author": properties.creator, "subject": properties.subject,
        "creator": None, "producer": None,
        "created": _iso(properties.created) if properties.created else None,
        "modified": _iso(properties.modified) if properties.modified else None,
    }
    return {
        "sheets": sheets,
        "sheet_names": names,
        "macro_enabled": macro_enabled,
        "fields": collector.fields,
        "metadata": metadata,
        "warnings": warnings,
        "truncated": any(s["truncated"] for s in sheets) or len(worksheets) > len(analysed),
    }
