"""PDF analysis: exact fields from a generated text-layer invoice, scans, encryption, garbage, page cap."""
from __future__ import annotations

import time

import pytest
from PIL import Image
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from service.engine.kind import JobCancelled, JobFailed
from service.reports import analyze
from service.reports.schema import validate

INVOICE = [
    [
        "ACME Supplies Ltd.",
        "Invoice No. INV-2025-0042",
        "Invoice Date: 2025-03-14",
        "Due: April 13, 2025",
        "Bill to: billing@example.com",
        "Phone: +1 (415) 555-0123",
        "PO 4500012345",
        "Total: \u20ac1.234,56",
    ],
    ["Paid in full on 03/20/2025, USD 1,350.00"],
]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def text_pdf(path, pages, *, user_password=None, owner_password=None, metadata=True):
    """A PDF whose pages draw ``pages`` (lists of lines) in Helvetica with WinAnsi encoding."""
    writer = PdfWriter()
    font = DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica"), NameObject("/Encoding"): NameObject("/WinAnsiEncoding"),
    })
    for lines in pages:
        page = writer.add_blank_page(612, 792)
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 720 Td", *[f"({_escape(line)}) Tj T*" for line in lines], "ET"]
        stream = DecodedStreamObject()
        stream.set_data("\n".join(ops).encode("cp1252"))
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        page.replace_contents(stream)
    if metadata:
        writer.add_metadata({"/Title": "Invoice INV-2025-0042", "/Author": "ACME Billing", "/Producer": "tests",
                             "/CreationDate": "D:20250314120000Z", "/ModDate": "D:20250315083000+02'00'"})
    if user_password is not None:
        writer.encrypt(user_password, owner_password)
    writer.write(path)
    return path


def test_text_layer_invoice(tmp_path):
    calls = []
    result = analyze(text_pdf(tmp_path / "invoice.pdf", INVOICE), {}, progress=lambda p, m=None: calls.append(m))
    validate(result)
    assert result["source"]["type"] == "pdf"
    summary = result["summary"]
    assert {k: summary[k] for k in ("title", "author", "producer", "created", "modified", "page_count",
                                    "pages_analysed", "encrypted", "truncated")} == {
        "title": "Invoice INV-2025-0042", "author": "ACME Billing", "producer": "tests",
        "created": "2025-03-14T12:00:00+00:00", "modified": "2025-03-15T08:30:00+02:00",
        "page_count": 2, "pages_analysed": 2, "encrypted": False, "truncated": False}
    assert [p["text_source"] for p in result["pages"]] == ["text_layer", "text_layer"]
    assert result["pages"][0]["width"] == 612 and result["pages"][0]["height"] == 792
    assert result["text"]["source"] == "text_layer"
    assert result["text"]["content"].startswith("ACME Supplies Ltd.\nInvoice No. INV-2025-0042\n")
    assert "\f" in result["text"]["content"]

    typed = [(f["type"], f["value"], f["position"]["page"], f["position"]["line"]) for f in result["fields"]
             if f["type"] != "pair"]
    assert typed == [
        ("reference", "INV-2025-0042", 1, 2),
        ("date", "2025-03-14", 1, 3),
        ("date", "2025-04-13", 1, 4),
        ("email", "billing@example.com", 1, 5),
        ("phone", "+14155550123", 1, 6),
        ("reference", "4500012345", 1, 7),
        ("money", "1234.56 EUR", 1, 8),
        ("date", "2025-03-20", 2, 1),
        ("money", "1350.00 USD", 2, 1),
    ]
    pairs = [(f["key"], f["value"]) for f in result["fields"] if f["type"] == "pair"]
    assert pairs == [("Invoice Date", "2025-03-14"), ("Due", "April 13, 2025"), ("Bill to", "billing@example.com"),
                     ("Phone", "+1 (415) 555-0123"), ("Total", "\u20ac1.234,56")]
    money = next(f for f in result["fields"] if f["type"] == "money")
    assert (money["amount"], money["currency"], money["symbol"], money["text"]) == ("1234.56", "EUR", "\u20ac",
                                                                                    "\u20ac1.234,56")
    assert result["summary"]["field_counts"] == {"date": 3, "money": 2, "email": 1, "phone": 1, "reference": 2,
                                                 "pair": 5}
    assert "page 1 of 2" in calls and "page 2 of 2" in calls


def test_scan_without_text_layer(tmp_path):
    path = tmp_path / "scan.pdf"
    Image.new("RGB", (300, 200), "white").save(path, "PDF")
    result = analyze(path, {})
    validate(result)
    assert result["text"] == {"content": "", "length": 0, "truncated": False, "source": "none"}
    assert result["fields"] == []
    assert [w["code"] for w in result["warnings"]] == ["NO_TEXT_LAYER"]

    seen = []

    def ocr(image):
        seen.append(image.size)
        return "Receipt # R-0099\nTotal: $12.50"

    result = analyze(path, {}, ocr=ocr)
    validate(result)
    assert seen == [(300, 200)]
    assert result["pages"][0]["text_source"] == "ocr" and result["text"]["source"] == "ocr"
    assert [(f["type"], f["value"]) for f in result["fields"] if f["type"] != "pair"] == [
        ("reference", "R-0099"), ("money", "12.50 USD")]
    assert result["warnings"] == []


def test_password_protected_pdf_fails(tmp_path):
    path = text_pdf(tmp_path / "locked.pdf", INVOICE, user_password="secret")
    with pytest.raises(JobFailed) as caught:
        analyze(path, {})
    assert caught.value.code == "PDF_ENCRYPTED"


def test_empty_user_password_opens(tmp_path):
    path = text_pdf(tmp_path / "perms.pdf", INVOICE, user_password="", owner_password="owner")
    result = analyze(path, {})
    assert result["summary"]["encrypted"] is True
    assert result["fields"][0]["value"] == "INV-2025-0042"


@pytest.mark.parametrize("content", [
    b"%PDF-1.7\n" + bytes(range(256)) * 20,
    b"%PDF-1.4\n",
    "half",
])
def test_malformed_pdfs_are_invalid(tmp_path, content):
    if content == "half":
        whole = text_pdf(tmp_path / "whole.pdf", INVOICE).read_bytes()
        content = whole[: len(whole) // 2]
    path = tmp_path / "broken.pdf"
    path.write_bytes(content)
    with pytest.raises(JobFailed) as caught:
        analyze(path, {})
    assert caught.value.code == "PDF_INVALID"


def _blank_pages(path, count: int):
    writer = PdfWriter()
    for _ in range(count):
        writer.add_blank_page(612, 792)
    writer.write(path)
    return path


def test_page_cap_truncates_thousands_of_pages(tmp_path):
    path = _blank_pages(tmp_path / "book.pdf", 3000)
    started = time.monotonic()
    result = analyze(path, {})
    assert time.monotonic() - started < 10
    validate(result)
    assert (result["summary"]["page_count"], result["summary"]["pages_analysed"]) == (3000, 500)
    assert len(result["pages"]) == 500 and result["summary"]["truncated"] is True
    assert [w["code"] for w in result["warnings"]] == ["PAGES_TRUNCATED", "NO_TEXT_LAYER"]


def test_page_count_beyond_the_refusal_limit_fails(tmp_path):
    path = _blank_pages(tmp_path / "huge.pdf", 3000)
    with pytest.raises(JobFailed) as caught:
        analyze(path, {"REPORT_PDF_REFUSE_PAGES": 2000})
    assert caught.value.code == "PDF_TOO_MANY_PAGES"
    assert caught.value.details == {"pages": 3000, "max_pages": 2000}


def test_cancel_between_pages(tmp_path):
    path = _blank_pages(tmp_path / "some.pdf", 5)
    polls = []

    def cancelled():
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(JobCancelled):
        analyze(path, {}, cancelled=cancelled)
