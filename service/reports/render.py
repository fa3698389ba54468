"""The result as an HTML page and as an XLSX report.

Both treat every string from the document as hostile:

- HTML: Jinja2 with autoescape on; the page is self-contained (inline CSS, no scripts, no
  external assets) and carries a Content-Security-Policy that forbids scripts and remote loads,
  so even a missed escape could not run or fetch anything.
- XLSX (openpyxl write-only): every string is written as an inline *string* cell, so a source
  cell reading ``=HYPERLINK(...)`` (or starting with ``+``, ``-``, ``@``) stays text and is never
  a formula; characters XML cannot hold are removed; cells are cut at Excel's 32767 characters.

Neither output contains ``result["private"]`` (an image's GPS location) unless the caller
passes ``include_private=True``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, BinaryIO

from jinja2 import Environment, StrictUndefined
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.utils import get_column_letter

EXCEL_CELL_MAX = 32767
_SHEET_TITLE_MAX = 31
_SHEET_TITLE_BAD = re.compile(r"[\[\]:*?/\\]")
_TEXT_LINES_MAX = 20_000

_env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _position(position: dict) -> str:
    parts = []
    if "sheet" in position:
        parts.append(f"{position['sheet']}!{position.get('cell', '')}")
    if "page" in position:
        parts.append(f"page {position['page']}")
    if "line" in position:
        parts.append(f"line {position['line']}")
    return ", ".join(parts)


def _number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e15 else str(value)
    return str(value)


_env.filters["position"] = _position
_env.filters["number"] = _number

_TEMPLATE = _env.from_string("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Report: {{ result.source.name or result.source.type }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; background: #f8f8f8; padding: 1rem; max-height: 40rem; overflow: auto; }
.warn { color: #8a4b00; }
</style>
</head>
<body>
<h1>Report: {{ result.source.name or result.source.type }}</h1>
<h2>Source</h2>
<table>
<tr><th>Type</th><td>{{ result.source.type }} ({{ result.source.mime }})</td></tr>
<tr><th>Size</th><td>{{ result.source.size }} bytes</td></tr>
<tr><th>SHA-256</th><td><code>{{ result.source.sha256 }}</code></td></tr>
</table>
<h2>Summary</h2>
<table>
{% for key, value in summary_rows %}
<tr><th>{{ key }}</th><td>{{ value }}</td></tr>
{% endfor %}
</table>
{% if result.warnings %}
<h2>Warnings</h2>
<ul>
{% for warning in result.warnings %}
<li class="warn"><code>{{ warning.code }}</code> {{ warning.message }}</li>
{% endfor %}
</ul>
{% endif %}
<h2>Key fields ({{ result.fields|length }})</h2>
{% if result.fields %}
<table>
<tr><th>Type</th><th>Value</th><th>As found</th><th>Where</th></tr>
{% for field in result.fields %}
<tr><td>{{ field.type }}{% if field.label is defined %} ({{ field.label }}){% endif %}</td>
<td>{% if field.key is defined %}<b>{{ field.key }}</b>: {% endif %}{{ field.value }}</td>
<td>{{ field.text }}</td><td>{{ field.position|position }}</td></tr>
{% endfor %}
</table>
{% else %}
<p>None found.</p>
{% endif %}
{% if result.sheets is defined %}
{% for sheet in result.sheets %}
<h2>Sheet: {{ sheet.name }}</h2>
<p>{{ sheet.rows }} rows × {{ sheet.columns_count }} columns{% if sheet.dimensions %} (declared {{ sheet.dimensions }}){% endif %};
header row: {{ sheet.header_row or "none detected" }}; {{ sheet.data_rows }} data rows, {{ sheet.blanks }} blanks,
{{ sheet.formulas }} formulas{% if sheet.truncated %}; <span class="warn">truncated</span>{% endif %}.</p>
{% if sheet.merged.count %}
<p>Merged ranges ({{ sheet.merged.count }}): {{ sheet.merged.ranges|join(", ") }}</p>
{% endif %}
<table>
<tr><th>Column</th><th>Header</th><th>Type</th><th>Values</th><th>Blanks</th><th>Formulas</th>
<th>Sum</th><th>Mean</th><th>Min</th><th>Max</th><th>First date</th><th>Last date</th></tr>
{% for column in sheet.columns %}
<tr><td>{{ column.letter }}</td><td>{{ column.header or "" }}</td><td>{{ column.type }}</td>
<td class="n">{{ column.count }}</td><td class="n">{{ column.blanks }}</td><td class="n">{{ column.formulas }}</td>
{% if column.numeric %}<td class="n">{{ column.numeric.sum|number }}</td><td class="n">{{ column.numeric.mean|number }}</td>
<td class="n">{{ column.numeric.min|number }}</td><td class="n">{{ column.numeric.max|number }}</td>
{% else %}<td></td><td></td><td></td><td></td>{% endif %}
<td>{{ column.dates.min if column.dates else "" }}</td><td>{{ column.dates.max if column.dates else "" }}</td></tr>
{% endfor %}
</table>
{% endfor %}
{% endif %}
{% if result.pages is defined %}
<h2>Pages ({{ result.summary.pages_analysed }} of {{ result.summary.page_count }} analysed)</h2>
<table>
<tr><th>Page</th><th>Size (pt)</th><th>Rotation</th><th>Characters</th><th>Text from</th></tr>
{% for page in result.pages %}
<tr><td class="n">{{ page.number }}</td><td>{{ page.width|number }} × {{ page.height|number }}</td>
<td class="n">{{ page.rotation }}</td><td class="n">{{ page.chars }}</td><td>{{ page.text_source or "" }}</td></tr>
{% endfor %}
</table>
{% endif %}
{% if result.image is defined %}
<h2>Image</h2>
<table>
<tr><th>Format</th><td>{{ result.image.format }}</td></tr>
<tr><th>Size</th><td>{{ result.image.width }} × {{ result.image.height }} px, {{ result.image.mode }}</td></tr>
<tr><th>DPI</th><td>{{ result.image.dpi|join(" × ") if result.image.dpi else "" }}</td></tr>
<tr><th>Frames</th><td>{{ result.image.frames }}</td></tr>
<tr><th>Location (GPS)</th><td>{{ "present" if result.image.has_gps else "none" }}</td></tr>
</table>
{% if result.image.exif %}
<h3>EXIF</h3>
<table>
{% for key, value in result.image.exif.items() %}
<tr><th>{{ key }}</th><td>{{ value }}</td></tr>
{% endfor %}
</table>
{% endif %}
{% endif %}
{% if private and private.gps %}
<h2>Location (private)</h2>
<table>
<tr><th>Latitude</th><td>{{ private.gps.latitude }}</td></tr>
<tr><th>Longitude</th><td>{{ private.gps.longitude }}</td></tr>
<tr><th>Altitude</th><td>{{ private.gps.altitude }}</td></tr>
</table>
{% endif %}
<h2>Text{% if result.text.truncated %} (truncated){% endif %}</h2>
{% if result.text.content %}
<pre>{{ result.text.content }}</pre>
{% else %}
<p>No text ({{ result.text.source }}).</p>
{% endif %}
</body>
</html>
""")


def _summary_rows(result: dict) -> list[tuple[str, Any]]:
    rows = []
    for key, value in result["summary"].items():
        if key == "field_counts":
            value = ", ".join(f"{k}: {v}" for k, v in value.items() if v) or "none"
        if value is None:
            continue
        rows.append((key.replace("_", " ").capitalize(), value))
    return rows


def render_html(result: dict, include_private: bool = False) -> str:
    """A self-contained HTML page of the result."""
    return _TEMPLATE.render(result=result, summary_rows=_summary_rows(result),
                            private=result.get("private") if include_private else None)


# --- XLSX --------------------------------------------------------------------------------

def _text(value: str) -> str:
    return ILLEGAL_CHARACTERS_RE.sub("", value)[:EXCEL_CELL_MAX]


def _cell(ws, value: Any):
    """A cell that can never be a formula: strings are typed as strings after assignment
    (openpyxl makes any string starting with "=" a formula on assignment)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, dict)):
        value = str(value)
    if isinstance(value, str):
        cell = WriteOnlyCell(ws, value=_text(value))
        cell.data_type = "s"
        return cell
    if isinstance(value, (bool, int, float)):
        return WriteOnlyCell(ws, value=value)
    cell = WriteOnlyCell(ws, value=_text(str(value)))
    cell.data_type = "s"
    return cell


def _append(ws, values) -> None:
    ws.append([_cell(ws, v) for v in values])


class _Titles:
    """Unique, valid sheet titles (31 characters, no []:*?/\\)."""

    def __init__(self):
        self.used: set[str] = set()

    def __call__(self, wanted: str) -> str:
        base = _SHEET_TITLE_BAD.sub("_", _text(wanted)).strip("'") or "Sheet"
        title, n = base[:_SHEET_TITLE_MAX], 1
        while title.casefold() in self.used:
            n += 1
            suffix = f" ({n})"
            title = base[: _SHEET_TITLE_MAX - len(suffix)] + suffix
        self.used.add(title.casefold())
        return title


def _position_cells(position: dict) -> list:
    return [position.get("page"), position.get("sheet"), position.get("cell"), position.get("line"),
            position.get("column")]


def _new_sheet(wb: Workbook, title: str):
    ws = wb.create_sheet(title)
    # Column widths must be set before the first row: write-only sheets stream their XML.
    ws.column_dimensions[get_column_letter(1)].width = 18
    ws.column_dimensions[get_column_letter(2)].width = 40
    ws.column_dimensions[get_column_letter(3)].width = 30
    return ws


def write_xlsx(result: dict, out: str | Path | BinaryIO, include_private: bool = False) -> None:
    """The result as a workbook: Summary, Fields, one sheet per analysed source sheet (column
    statistics), Pages or Image, and Text. ``out`` is a path or a binary file object."""
    wb = Workbook(write_only=True)
    titles = _Titles()

    ws = _new_sheet(wb, titles("Summary"))
    _append(ws, ["Item", "Value"])
    source = result["source"]
    for key in ("name", "type", "mime", "size", "sha256"):
        _append(ws, [f"source {key}", source.get(key)])
    for key, value in _summary_rows(result):
        _append(ws, [key, value])
    for warning in result["warnings"]:
        _append(ws, ["warning", f"{warning['code']}: {warning['message']}"])
    if include_private and result.get("private", {}).get("gps"):
        gps = result["private"]["gps"]
        for key in ("latitude", "longitude", "altitude"):
            _append(ws, [f"GPS {key}", gps.get(key)])

    ws = _new_sheet(wb, titles("Fields"))
    _append(ws, ["Type", "Value", "As found", "Amount", "Currency", "Label", "Key", "Page", "Sheet", "Cell",
                 "Line", "Column"])
    for field in result["fields"]:
        _append(ws, [field["type"], field["value"], field["text"], field.get("amount"), field.get("currency"),
                     field.get("label"), field.get("key"), *_position_cells(field["position"])])

    for sheet in result.get("sheets", []):
        ws = _new_sheet(wb, titles(f"{sheet['index'] + 1} {sheet['name']}"))
        _append(ws, ["Sheet", sheet["name"]])
        _append(ws, ["Rows", sheet["rows"], "Columns", sheet["columns_count"], "Header row", sheet["header_row"],
                     "Data rows", sheet["data_rows"], "Formulas", sheet["formulas"], "Truncated", sheet["truncated"]])
        _append(ws, ["Merged ranges", ", ".join(sheet["merged"]["ranges"])])
        _append(ws, [])
        _append(ws, ["Column", "Header", "Type", "Values", "Blanks", "Formulas", "Errors", "Sum", "Mean", "Min",
                     "Max", "First date", "Last date"])
        for column in sheet["columns"]:
            numeric = column["numeric"] or {}
            dates = column["dates"] or {}
            _append(ws, [column["letter"], column["header"], column["type"], column["count"], column["blanks"],
                         column["formulas"], column["errors"], numeric.get("sum"), numeric.get("mean"),
                         numeric.get("min"), numeric.get("max"), dates.get("min"), dates.get("max")])

    if "pages" in result:
        ws = _new_sheet(wb, titles("Pages"))
        _append(ws, ["Page", "Width (pt)", "Height (pt)", "Rotation", "Characters", "Text from"])
        for page in result["pages"]:
            _append(ws, [page["number"], page["width"], page["height"], page["rotation"], page["chars"],
                         page["text_source"]])

    if "image" in result:
        ws = _new_sheet(wb, titles("Image"))
        image = result["image"]
        for key in ("format", "width", "height", "mode", "dpi", "frames", "animated", "has_gps"):
            value = image[key]
            _append(ws, [key, " × ".join(map(str, value)) if isinstance(value, list) else value])
        for key, value in image["exif"].items():
            _append(ws, [f"EXIF {key}", value])

    ws = _new_sheet(wb, titles("Text"))
    for number, line in enumerate(result["text"]["content"].splitlines()[:_TEXT_LINES_MAX], start=1):
        _append(ws, [number, line])

    wb.save(out)
