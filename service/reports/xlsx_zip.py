"""A workbook read straight from its zip, before openpyxl opens it (steps 1 and 2 of
service/reports/xlsx.py): the zip directory checked against the limits without decompressing
anything, and one streaming expat pass per sheet for what openpyxl's read-only mode cannot give
(merged ranges, formula and error cells, the real extent of the data)."""
from __future__ import annotations

import re
import zipfile
from typing import Callable
from xml.parsers import expat

from service.reports import errors
from service.reports.settings import MiB, ReportSettings

RATIO_MIN_BYTES = 1 * MiB  # tiny members have wild ratios and cannot hurt
_FEED = 64 * 1024

# --- 1. the zip directory ----------------------------------------------------------------

def check_zip(path, settings: ReportSettings) -> None:
    """XLSX_TOO_LARGE or XLSX_INVALID from the central directory, before anything is inflated."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise errors.failed(errors.XLSX_INVALID, "The workbook is not a readable zip file.",
                            reason=errors.describe(exc)) from None
    if len(members) > settings.xlsx_max_members:
        raise errors.failed(errors.XLSX_TOO_LARGE, "The workbook has too many parts.",
                            members=len(members), max_members=settings.xlsx_max_members)
    total = sum(member.file_size for member in members)
    if total > settings.xlsx_max_uncompressed:
        raise errors.failed(errors.XLSX_TOO_LARGE, "The workbook is too large when uncompressed.",
                            uncompressed_bytes=total, max_uncompressed_bytes=settings.xlsx_max_uncompressed)
    for member in members:
        if member.flag_bits & 0x1:
            raise errors.failed(errors.XLSX_INVALID, "The workbook's zip is encrypted.", member=member.filename)
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise errors.failed(errors.XLSX_INVALID, "The workbook uses an unsupported zip compression.",
                                member=member.filename, compress_type=member.compress_type)
        if member.file_size >= RATIO_MIN_BYTES:
            ratio = member.file_size / max(member.compress_size, 1)
            if ratio > settings.xlsx_max_ratio:
                raise errors.failed(errors.XLSX_TOO_LARGE, "A part of the workbook is compressed "
                                    "suspiciously well (zip bomb guard).", member=member.filename,
                                    ratio=round(ratio, 1), max_ratio=settings.xlsx_max_ratio)


def is_macro_enabled(path) -> bool:
    """XLSM: the workbook part's content type says macroEnabled. Reads a small member only."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("[Content_Types].xml")
            if info.file_size > MiB:
                return False
            return b"macroEnabled" in archive.read(info)
    except (KeyError, zipfile.BadZipFile, OSError, ValueError):
        return False


# --- 2. the raw sheet scan ---------------------------------------------------------------

_REF = re.compile(r"([A-Za-z]{1,3})([0-9]{1,7})")
_COLUMN_CACHE: dict[str, int] = {}


def _cell_ref(ref: str) -> tuple[int, int]:
    """"AB12" -> (12, 28); (0, 0) for a malformed reference. Hot: once per cell."""
    match = _REF.fullmatch(ref)
    if not match:
        return 0, 0
    letters, digits = match.groups()
    col = _COLUMN_CACHE.get(letters)
    if col is None:
        col = 0
        for ch in letters.upper():
            col = col * 26 + ord(ch) - 64
        if len(_COLUMN_CACHE) < 20_000:
            _COLUMN_CACHE[letters] = col
    return int(digits), col


def _local(name: str, _cache: dict[str, str] = {}) -> str:
    """"{namespace}c" -> "c", cached: the few tag names repeat millions of times."""
    local = _cache.get(name)
    if local is None:
        local = _cache[name] = name.rpartition("}")[2]
    return local


class SheetScan:
    """Streaming facts about one sheet's XML. Counts are kept for cells within the caps."""

    def __init__(self, max_rows: int, max_cols: int, max_merged: int):
        self.max_rows, self.max_cols, self.max_merged = max_rows, max_cols, max_merged
        self.last_row = 0        # highest row with a value or formula
        self.last_col = 0        # highest column with a value or formula
        self.cells = 0           # cells with a value or formula
        self.formulas: dict[int, int] = {}
        self.uncached: dict[int, int] = {}
        self.errors: dict[int, int] = {}
        self.merged: list[str] = []
        self.merged_count = 0
        self._row = 0
        self._col = 0
        self._cell: list | None = None  # [row, col, type, has_f, has_value]
        self._in_value = False

    # Only start tags and text are handled: no end-tag callback (there are as many end tags
    # as start tags, and Python callbacks are the cost of this pass). A cell is finished when
    # the next cell, row or other element starts, or when the document ends.
    def start(self, name: str, attrs: dict) -> None:
        tag = _local(name)
        self._in_value = False
        if tag == "c":
            if self._cell is not None:
                self.finish()
            ref = attrs.get("r")
            row, col = _cell_ref(ref) if ref else (0, 0)
            self._col = col or self._col + 1
            self._cell = [row or self._row, self._col, attrs.get("t"), False, False]
        elif tag == "v":
            self._in_value = True  # a value only if it has text: writers emit empty <v/> too
        elif tag == "f":
            if self._cell is not None:
                self._cell[3] = True
        elif tag == "is":
            if self._cell is not None:
                self._cell[4] = True
        elif tag == "row":
            if self._cell is not None:
                self.finish()
            try:
                self._row = int(attrs.get("r") or self._row + 1)
            except ValueError:
                self._row += 1
            self._col = 0
        elif tag == "mergeCell":
            self.merged_count += 1
            if len(self.merged) < self.max_merged and attrs.get("ref"):
                self.merged.append(str(attrs["ref"])[:40])
        elif tag not in ("t", "r", "rPr") and self._cell is not None:
            self.finish()  # past the last cell (into mergeCells, pageMargins...)

    def text(self, data: str) -> None:
        # Text right after <v> belongs to it: <v> has no children, and whatever follows </v>
        # before the next tag is whitespace.
        if self._in_value and self._cell is not None and not data.isspace():
            self._cell[4] = True

    def finish(self) -> None:
        row, col, kind, has_f, has_v = self._cell
        self._cell = None
        if not (has_f or has_v):
            return  # a styled empty cell
        self.cells += 1
        if row > self.last_row:
            self.last_row = row
        if col > self.last_col:
            self.last_col = col
        if row > self.max_rows or col > self.max_cols:
            return
        if has_f:
            self.formulas[col] = self.formulas.get(col, 0) + 1
            if not has_v:
                self.uncached[col] = self.uncached.get(col, 0) + 1
        if kind == "e":
            self.errors[col] = self.errors.get(col, 0) + 1


def _refuse_dtd(*_args) -> None:
    raise ValueError("DTDs are not allowed in a workbook")


def scan_sheet(archive: zipfile.ZipFile, member: str, settings: ReportSettings,
                check_cancelled: Callable[[], None]) -> SheetScan:
    scan = SheetScan(settings.xlsx_max_rows, settings.xlsx_max_columns, settings.xlsx_max_merged)
    parser = expat.ParserCreate(namespace_separator="}")
    # No DTD means no entities: no billion laughs, no external fetches.
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = scan.start
    parser.CharacterDataHandler = scan.text
    parser.buffer_text = True
    with archive.open(member) as stream:
        while chunk := stream.read(_FEED):
            parser.Parse(chunk, False)
            check_cancelled()
        parser.Parse(b"", True)
    if scan._cell is not None:
        scan.finish()
    return scan
