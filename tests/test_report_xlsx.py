"""Workbook analysis: exact statistics from generated workbooks, caps, and hostile zips."""
from __future__ import annotations

import datetime as dt
import os
import re
import time
import zipfile

import pytest
from openpyxl import Workbook

from service.engine.kind import JobCancelled, JobFailed
from service.reports import analyze
from service.reports.schema import validate


def rewrite_member(path, member: str, change) -> None:
    """Rewrite one zip member through ``change(bytes) -> bytes`` (to plant cached values, DTDs...)."""
    with zipfile.ZipFile(path) as src:
        items = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info, data in items:
            dst.writestr(info.filename, change(data) if info.filename == member else data)


@pytest.fixture
def workbook(tmp_path):
    wb = Workbook()
    ws = wb.active
    ws.title = "Sales"
    ws.append(["Quarterly sales"])
    ws.merge_cells("A1:E1")
    ws.append(["Date", "Item", "Qty", "Price", "Paid"])
    ws.append([dt.date(2025, 1, 5), "Pen", 3, 1.5, True])
    ws.append([dt.date(2025, 3, 1), "Book", None, 12.25, False])
    ws.append([dt.datetime(2025, 2, 1, 10, 30), "Ink", 7, 0.1, None])
    ws.append([dt.date(2024, 12, 31), "Total", "=C3*2", 2, None])
    ws.append([None, "   ", None, 0.2, True])
    ws.merge_cells("D9:E9")
    notes = wb.create_sheet("Notes")
    notes.append(["Invoice No. INV-2025-0042"])
    notes.append(["Contact: billing@acme.example"])
    notes.append(["Total: $1,234.56"])
    path = tmp_path / "book.xlsx"
    wb.save(path)
    return path


def column(sheet: dict, letter: str) -> dict:
    return next(c for c in sheet["columns"] if c["letter"] == letter)


def test_exact_statistics(workbook):
    calls = []
    result = analyze(workbook, {}, progress=lambda p, m=None: calls.append((p, m)), name="book.xlsx")
    validate(result)
    assert result["source"]["type"] == "xlsx" and result["source"]["name"] == "book.xlsx"
    assert result["sheet_names"] == ["Sales", "Notes"]
    assert result["summary"]["sheet_count"] == 2 and result["summary"]["sheets_analysed"] == 2
    sales, notes = result["sheets"]
    assert {k: sales[k] for k in ("name", "index", "state", "dimensions", "rows", "columns_count", "header_row",
                                  "data_rows", "formulas", "truncated")} == {
        "name": "Sales", "index": 0, "state": "visible", "dimensions": "A1:E9", "rows": 7, "columns_count": 5,
        "header_row": 2, "data_rows": 5, "formulas": 1, "truncated": False}
    assert sales["merged"]["count"] == 2 and sorted(sales["merged"]["ranges"]) == ["A1:E1", "D9:E9"]

    date = column(sales, "A")
    assert (date["header"], date["type"], date["count"], date["blanks"]) == ("Date", "date", 4, 1)
    assert date["dates"] == {"count": 4, "min": "2024-12-31", "max": "2025-03-01"}
    assert date["numeric"] is None

    item = column(sales, "B")
    assert (item["type"], item["count"], item["blanks"], item["text_max_length"]) == ("text", 4, 1, 5)

    qty = column(sales, "C")
    assert (qty["type"], qty["count"], qty["blanks"]) == ("integer", 2, 3)
    assert (qty["formulas"], qty["formulas_without_value"]) == (1, 1)
    assert qty["numeric"] == {"count": 2, "sum": 10, "mean": 5, "min": 3, "max": 7}

    price = column(sales, "D")
    assert price["type"] == "number" and price["types"] == {"decimal": 4, "integer": 1}
    assert price["numeric"] == {"count": 5, "sum": 16.05, "mean": 3.21, "min": 0.1, "max": 12.25}

    paid = column(sales, "E")
    assert (paid["type"], paid["count"], paid["blanks"], paid["bools"]) == ("bool", 3, 2, {"true": 2, "false": 1})
    assert sales["blanks"] == 1 + 1 + 3 + 0 + 2

    assert notes["header_row"] is None and notes["data_rows"] == 3
    assert [(f["type"], f["value"], f["position"]) for f in result["fields"]] == [
        ("reference", "INV-2025-0042", {"sheet": "Notes", "cell": "A1", "column": 0}),
        ("pair", "billing@acme.example", {"sheet": "Notes", "cell": "A2", "column": 0}),
        ("email", "billing@acme.example", {"sheet": "Notes", "cell": "A2", "column": 9}),
        ("pair", "$1,234.56", {"sheet": "Notes", "cell": "A3", "column": 0}),
        ("money", "1234.56 USD", {"sheet": "Notes", "cell": "A3", "column": 7}),
    ]
    assert [w["code"] for w in result["warnings"]] == ["FORMULAS_NOT_CALCULATED"]
    assert [m for _, m in calls][:3] == ["analysing a XLSX file", "sheet 1 of 2: Sales", "sheet 2 of 2: Notes"]
    assert calls[-1][0] == 100.0


def test_cached_formula_values_are_used(workbook):
    def cache_six(xml: bytes) -> bytes:
        # openpyxl writes the empty cached value as <v /> with its own writer, <v></v> with lxml
        changed, count = re.subn(rb"<f>C3\*2</f><v\s*/>|<f>C3\*2</f><v></v>", b"<f>C3*2</f><v>6</v>", xml)
        assert count == 1, xml[:2000]
        return changed
    rewrite_member(workbook, "xl/worksheets/sheet1.xml", cache_six)
    result = analyze(workbook, {})
    qty = column(result["sheets"][0], "C")
    assert (qty["count"], qty["formulas"], qty["formulas_without_value"]) == (3, 1, 0)
    assert qty["numeric"] == {"count": 3, "sum": 16, "mean": 5.333333333333333, "min": 3, "max": 7}
    assert result["warnings"] == []


def test_mixed_and_empty_columns(tmp_path):
    wb = Workbook()
    ws = wb.active
    ws.append(["Name", "Value", "Nothing", "Amount"])
    ws.append(["a", 1, None, 1])
    ws.append(["b", "two", None, 2.5])
    ws.append(["c", dt.date(2025, 1, 1), None, -1])
    path = tmp_path / "m.xlsx"
    wb.save(path)
    sheet = analyze(path, {})["sheets"][0]
    assert sheet["header_row"] == 1
    assert [c["type"] for c in sheet["columns"]] == ["text", "mixed", "empty", "number"]
    assert column(sheet, "C")["blanks"] == 3
    assert column(sheet, "D")["numeric"] == {"count": 3, "sum": 2.5, "mean": 0.8333333333333334, "min": -1,
                                              "max": 2.5}


def test_row_and_column_caps(tmp_path):
    wb = Workbook()
    ws = wb.active
    ws.append(["n", "double", "label"])
    for i in range(1, 300):
        ws.append([i, i * 2, f"row {i}"])
    ws.cell(row=5, column=250, value="far away")
    path = tmp_path / "big.xlsx"
    wb.save(path)
    result = analyze(path, {"REPORT_XLSX_MAX_ROWS": 100, "REPORT_XLSX_MAX_COLUMNS": 5})
    validate(result)
    sheet = result["sheets"][0]
    assert (sheet["rows"], sheet["columns_count"]) == (300, 250)
    assert (sheet["rows_analysed"], sheet["columns_analysed"], sheet["truncated"]) == (100, 5, True)
    assert column(sheet, "A")["numeric"] == {"count": 99, "sum": 4950, "mean": 50, "min": 1, "max": 99}
    assert result["summary"]["truncated"] is True
    assert "SHEET_TRUNCATED" in [w["code"] for w in result["warnings"]]


def test_sheet_cap(tmp_path):
    wb = Workbook()
    for i in range(4):
        wb.create_sheet(f"S{i}").append([i])
    path = tmp_path / "many.xlsx"
    wb.save(path)
    result = analyze(path, {"REPORT_XLSX_MAX_SHEETS": 2})
    assert [s["name"] for s in result["sheets"]] == ["Sheet", "S0"]
    assert result["summary"]["sheet_count"] == 5 and result["summary"]["truncated"] is True


def test_cancelled_between_sheets(workbook):
    with pytest.raises(JobCancelled):
        analyze(workbook, {}, cancelled=lambda: True)


def _no_inflating(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a member was decompressed")
    monkeypatch.setattr(zipfile.ZipExtFile, "read", refuse)
    monkeypatch.setattr(zipfile.ZipExtFile, "read1", refuse)


def _skeleton(archive: zipfile.ZipFile) -> None:
    archive.writestr("[Content_Types].xml", "<Types/>")
    archive.writestr("xl/workbook.xml", "<workbook/>")


def test_zip_bomb_is_refused_from_the_directory(tmp_path, monkeypatch):
    path = tmp_path / "bomb.xlsx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        _skeleton(archive)
        zeros = bytes(1 << 20)
        with archive.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as member:
            for _ in range(200):  # 200 MiB of zeros, ~200 KiB on disk
                member.write(zeros)
    assert path.stat().st_size < 1 << 20
    _no_inflating(monkeypatch)
    started = time.monotonic()
    with pytest.raises(JobFailed) as caught:
        analyze(path, {})
    assert time.monotonic() - started < 1.0
    assert caught.value.code == "XLSX_TOO_LARGE"
    assert caught.value.details["member"] == "xl/worksheets/sheet1.xml"
    assert caught.value.details["ratio"] > 200


def test_total_uncompressed_size_and_member_count(tmp_path, monkeypatch):
    path = tmp_path / "wide.xlsx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        _skeleton(archive)
        archive.writestr("xl/media/blob.bin", os.urandom(3 << 20))
    _no_inflating(monkeypatch)
    with pytest.raises(JobFailed) as caught:
        analyze(path, {"REPORT_XLSX_MAX_UNCOMPRESSED_BYTES": 2 << 20})
    assert caught.value.code == "XLSX_TOO_LARGE"
    assert caught.value.details["uncompressed_bytes"] > 3 << 20

    path = tmp_path / "crowd.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        _skeleton(archive)
        for i in range(60):
            archive.writestr(f"xl/x{i}.xml", "")
    with pytest.raises(JobFailed) as caught:
        analyze(path, {"REPORT_XLSX_MAX_MEMBERS": 50})
    assert caught.value.code == "XLSX_TOO_LARGE" and caught.value.details["members"] == 62


def test_broken_workbooks_are_invalid(tmp_path, workbook):
    path = tmp_path / "broken.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "not xml at all <<<")
    with pytest.raises(JobFailed) as caught:
        analyze(path, {})
    assert caught.value.code == "XLSX_INVALID"
    assert "Traceback" not in caught.value.message


def test_entity_expansion_is_refused(workbook):
    laughs = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>')
    rewrite_member(workbook, "xl/worksheets/sheet2.xml",
                   lambda xml: laughs + xml.replace(b"<sheetData>", b"<sheetData><!-- &lol2; -->"))
    with pytest.raises(JobFailed) as caught:
        analyze(workbook, {})
    assert caught.value.code == "XLSX_INVALID"


def test_xlsm_is_a_workbook(workbook, tmp_path):
    rewrite_member(workbook, "[Content_Types].xml", lambda xml: xml.replace(
        b"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml",
        b"application/vnd.ms-excel.sheet.macroEnabled.main+xml"))
    renamed = tmp_path / "macro.bin"  # the name says nothing; the bytes decide
    workbook.rename(renamed)
    result = analyze(renamed, {})
    assert result["source"]["type"] == "xlsx"
    assert result["source"]["mime"] == "application/vnd.ms-excel.sheet.macroEnabled.12"
