"""What a file is, decided by its content (magic bytes), never by its name or a client's header.

Only the types ilgun's document kinds read are recognised; anything else is None. An XLSX is a
zip holding an Excel workbook's parts, which is checked from the zip's directory alone (nothing
is decompressed here; the report kind checks sizes before it opens one).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

# type name → MIME type answered by the API and stored with the file
MIME = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "tiff": "image/tiff",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "pdf": "application/pdf",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "xlsm": "application/vnd.ms-excel.sheet.macroEnabled.12",
}
EXTENSION = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "webp": ".webp", "bmp": ".bmp", "pdf": ".pdf",
             "xlsx": ".xlsx", "xlsm": ".xlsm"}
IMAGE_TYPES = frozenset({"png", "jpeg", "tiff", "webp", "bmp"})
PDF_HEADER_WINDOW = 1024   # readers accept "%PDF-" anywhere in the first KiB (some files carry junk first)
_MACROS = "xl/vbaProject.bin"   # the VBA project: what makes a workbook an .xlsm


def sniff_bytes(head: bytes) -> str | None:
    """The type from the first bytes, for every type but the zip-based ones."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and _plausible_bmp(head):
        return "bmp"
    if b"%PDF-" in head[:PDF_HEADER_WINDOW]:
        return "pdf"
    return None


def _plausible_bmp(head: bytes) -> bool:
    # "BM" alone is two ASCII letters a text file may start with: the DIB header size at
    # offset 14 must be one of the sizes Windows defines.
    return len(head) >= 26 and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124)


def sniff(path: str | Path) -> str | None:
    """The type of the file at ``path`` (see MIME for the names), or None if unsupported."""
    with open(path, "rb") as f:
        head = f.read(PDF_HEADER_WINDOW)
    found = sniff_bytes(head)
    if found is not None or not head.startswith(b"PK\x03\x04"):
        return found
    return _sniff_workbook(path)


def _sniff_workbook(path: str | Path) -> str | None:
    """From the zip's central directory only: nothing is decompressed (a zip bomb is the
    report kind's to refuse, with its own limits)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, EOFError):
        return None
    if "[Content_Types].xml" not in names or "xl/workbook.xml" not in names:
        return None
    return "xlsm" if _MACROS in names else "xlsx"
