"""Key-field detection: exact values for a corpus of positives, and negatives that must stay quiet."""
from __future__ import annotations

import pytest

from service.reports.fields import detect, detect_line, parse_amount


def values(line: str, kind: str) -> list[str]:
    return [f["value"] for f in detect_line(line) if f["type"] == kind]


@pytest.mark.parametrize("line, expected", [
    ("Date 2025-03-14", ["2025-03-14"]),
    ("issued 2025/3/4 at noon", ["2025-03-04"]),
    ("stamp 2025-12-31T10:00:00Z", ["2025-12-31"]),
    ("US style 12/31/2025", ["2025-12-31"]),
    ("day first because 31/12/2025", ["2025-12-31"]),
    ("Datum 31.12.2025", ["2025-12-31"]),
    ("le 01-02-2025", ["2025-02-01"]),
    ("March 3, 2025", ["2025-03-03"]),
    ("due Sept. 30 2025", ["2025-09-30"]),
    ("3 March 2025", ["2025-03-03"]),
    ("the 21st of June, 2024", ["2024-06-21"]),
    ("7-Jan-2026", ["2026-01-07"]),
])
def test_dates(line, expected):
    assert values(line, "date") == expected


def test_slash_dates_that_could_swap_are_flagged():
    (field,) = [f for f in detect_line("on 03/04/2025") if f["type"] == "date"]
    assert field["value"] == "2025-03-04" and field["ambiguous"] is True
    (field,) = [f for f in detect_line("on 04/04/2025") if f["type"] == "date"]
    assert "ambiguous" not in field


@pytest.mark.parametrize("line", [
    "version 1.2.3", "2025-13-01", "2025-02-30", "31/31/2025", "12/31/25", "room 12.10",
    "IP 192.168.1.1", "order 20250314", "ISBN 978-3-16-148410-0", "March 2025", "1/2",
])
def test_not_dates(line):
    assert values(line, "date") == []


@pytest.mark.parametrize("line, amount, currency", [
    ("Total $1,234.56", "1234.56", "USD"),
    ("Total: US$ 99", "99", "USD"),
    ("Summe 1.234,56 €", "1234.56", "EUR"),
    ("€1.234", "1234", "EUR"),
    ("€12,5", "12.5", "EUR"),
    ("£0.99 each", "0.99", "GBP"),
    ("¥12,000", "12000", "JPY"),
    ("₩1,500,000", "1500000", "KRW"),
    ("합계 1,500,000원", "1500000", "KRW"),
    ("KRW 250000", "250000", "KRW"),
    ("1,350.00 USD", "1350.00", "USD"),
    ("EUR 1.150,00", "1150.00", "EUR"),
    ("CHF 1'234.50", "1234.50", "CHF"),
    ("C$20", "20", "CAD"),
    ("refund -$5.00", "-5.00", "USD"),
])
def test_money(line, amount, currency):
    (field,) = [f for f in detect_line(line) if f["type"] == "money"]
    assert (field["amount"], field["currency"]) == (amount, currency)
    assert field["value"] == f"{amount} {currency}"
    assert isinstance(field["amount"], str)  # never a float


@pytest.mark.parametrize("line", [
    "Qty 1,234", "USDA approved 12", "total 12.50", "EURO 2024", "$ sign", "3 euros", "XUSD 100",
    "in 2025 we",
])
def test_not_money(line):
    assert values(line, "money") == []


def test_parse_amount_rules():
    assert parse_amount("1,234,567.89") == "1234567.89"
    assert parse_amount("1.234.567,89") == "1234567.89"
    assert parse_amount("1 234,50".replace(" ", "\u00a0")) == "1234.50"
    assert parse_amount("0.5") == "0.5"


@pytest.mark.parametrize("line, expected", [
    ("mail ana@example.com today", ["ana@example.com"]),
    ("<Billing.Team+inv@Mail.ACME.co.uk>", ["Billing.Team+inv@mail.acme.co.uk"]),
    ("end of sentence: x_y@sub.example.org.", ["x_y@sub.example.org"]),
])
def test_emails(line, expected):
    assert values(line, "email") == expected


@pytest.mark.parametrize("line", ["a@b", "user@@example.com", "@handle", "x@-bad.com", "a..b@example.com"])
def test_not_emails(line):
    assert values(line, "email") == []


@pytest.mark.parametrize("line, expected", [
    ("Phone: +1 (415) 555-0123", ["+14155550123"]),
    ("+44 20 7946 0958", ["+442079460958"]),
    ("+82-10-1234-5678", ["+821012345678"]),
    ("call (555) 123-4567", ["5551234567"]),
    ("555-123-4567", ["5551234567"]),
    ("800.555.1234", ["8005551234"]),
    ("mobile 010-1234-5678", ["01012345678"]),
    ("Seoul 02-123-4567", ["021234567"]),
    ("Tel 020 7946 0958", ["02079460958"]),
])
def test_phones(line, expected):
    assert values(line, "phone") == expected


@pytest.mark.parametrize("line", [
    "2025-12-31", "12/31/2025", "31.12.2025", "2025.12.31", "SSN 123-45-6789", "IP 192.168.1.1",
    "ISBN 978-3-16-148410-0", "$1,234,567.89", "1.234.567,89 €", "Invoice No. 2025-0042-1234",
    "ref INV-555-123-4567", "020 7946 0958 rows", "10:30-11:45", "+1", "+12 345", "1234567890",
    "order 555 123 4567",
])
def test_not_phones(line):
    assert values(line, "phone") == []


@pytest.mark.parametrize("line, expected, label", [
    ("Invoice No. INV-2025-0042", "INV-2025-0042", "invoice"),
    ("Invoice #: 10042", "10042", "invoice"),
    ("INVOICE NUMBER A1B2C3", "A1B2C3", "invoice"),
    ("Ref: AB-77812", "AB-77812", "reference"),
    ("Reference No. 2025/114", "2025/114", "reference"),
    ("Order ID: 12345", "12345", "order"),
    ("PO 4500012345", "4500012345", "purchase_order"),
    ("P.O. #: PO-778", "PO-778", "purchase_order"),
    ("Receipt # R-0099", "R-0099", "receipt"),
])
def test_references(line, expected, label):
    (field,) = [f for f in detect_line(line) if f["type"] == "reference"]
    assert (field["value"], field["label"]) == (expected, label)


@pytest.mark.parametrize("line", [
    "PO Box 12, Springfield", "P.O. Box 4411", "Refund 123", "referring to 12 items", "Invoice Date: 2025-03-01",
    "Invoice: 2025-03-01", "order of 12 items", "Policy 123", "Report 2025", "ref: none",
])
def test_not_references(line):
    assert values(line, "reference") == []


def test_pairs_are_line_based_and_split_on_wide_gaps():
    fields = detect_line("Date: 2025-03-14     Due date: April 13, 2025")
    pairs = [(f["key"], f["value"]) for f in fields if f["type"] == "pair"]
    assert pairs == [("Date", "2025-03-14"), ("Due date", "April 13, 2025")]
    assert [f["value"] for f in fields if f["type"] == "date"] == ["2025-03-14", "2025-04-13"]


@pytest.mark.parametrize("line", ["at 10:30 sharp", "https://example.com/x", "Note:no space", "12: twelve",
                                  "a very long key with far too many words in it: value"])
def test_not_pairs(line):
    assert [f for f in detect_line(line) if f["type"] == "pair"] == []


def test_priority_claims_spans():
    # The reference claims its id: no date or phone inside it.
    fields = detect_line("Invoice No. 2025-0042-1234 dated 2025-03-01")
    assert [(f["type"], f["value"]) for f in fields] == [("reference", "2025-0042-1234"), ("date", "2025-03-01")]
    # The email claims its digits.
    assert [f["type"] for f in detect_line("555-123-4567@example.com")] == ["email"]


def test_positions_and_limit():
    text = "Hello\n\nContact: ana@example.com\nTotal $5"
    fields = detect(text, {"page": 2})
    assert [(f["type"], f["position"]) for f in fields] == [
        ("pair", {"page": 2, "line": 3, "column": 0}),
        ("email", {"page": 2, "line": 3, "column": 9}),
        ("money", {"page": 2, "line": 4, "column": 6}),
    ]
    assert len(detect(text, limit=2)) == 2
