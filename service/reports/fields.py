"""Key fields in free text: dates, money, emails, phone numbers, reference numbers, ``key: value``.

Precision matters more than recall: a report that lists a date as a phone number is worse than
one that misses a phone number. So every pattern is anchored on something unambiguous (a
currency, an ``@``, a label, a known separator layout), and within a line the detectors claim
spans in a fixed order (email, reference, money, date, phone): a later detector never matches
inside an earlier one's span, so ``INV-2025-0042`` is a reference and not a phone number.
``key: value`` pairs are a separate layer and may overlap anything.

Every field: ``{"type", "text" (as found), "value" (normalised), "position": {..., "line",
"column"}}`` plus ``amount``/``currency``/``symbol`` (money), ``label`` (reference), ``key``
(pair), ``ambiguous`` (a date whose day and month could be swapped).

Conventions (documented because they are choices):
- Dates: ``a/b/yyyy`` is month/day (US) unless ``a`` > 12; ``a.b.yyyy`` and ``a-b-yyyy`` are
  day.month (European). Two-digit years are ignored. Years 1900-2099.
- Money needs a currency (symbol, ISO code, or 원/円/元). A lone ``$`` is USD, ``¥`` is JPY.
  Separators: the last of ``.``/``,`` is the decimal point when both occur; a single separator
  followed by exactly three digits groups thousands (``€1.234`` is 1234), otherwise it is the
  decimal point. The amount is a decimal string (``"1234.50"``), never a float.
- Phones: ``+`` and 8-15 digits; ``(area) ddd-dddd``; dash or dot layouts 0x-xxx(x)-xxxx and
  xxx-xxx(x)-xxxx; space-separated layouts only on a line that says Tel/Phone/Fax/Mobile.
"""
from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable

FIELD_TYPES = ("date", "money", "email", "phone", "reference", "pair")

# --- dates -------------------------------------------------------------------------------

_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8,
    "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}
_MONTH = (r"(?P<mon>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
          r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")
_YEAR = r"(?P<y>(?:19|20)\d{2})"
_ISO_DATE = re.compile(r"(?<![\w.,/-])" + _YEAR + r"(?P<sep>[-/.])(?P<m>\d{1,2})(?P=sep)(?P<d>\d{1,2})"
                       r"(?!\d|[.,/-]\d)")
_NUMERIC_DATE = re.compile(r"(?<![\w.,/-])(?P<a>\d{1,2})(?P<sep>[-/.])(?P<b>\d{1,2})(?P=sep)" + _YEAR
                           + r"(?!\w|[.,/-]\d)")
_MONTH_FIRST = re.compile(r"(?<![\w])" + _MONTH + r"\s+(?P<d>\d{1,2})(?:st|nd|rd|th)?,?\s+" + _YEAR
                          + r"(?!\w)", re.I)
_DAY_FIRST = re.compile(r"(?<![\w.,/-])(?P<d>\d{1,2})(?:st|nd|rd|th)?(?:\s+of)?[\s-]+" + _MONTH
                        + r"(?:,?\s+|-)" + _YEAR + r"(?!\w)", re.I)


def _date(y: int, m: int, d: int) -> dt.date | None:
    try:
        return dt.date(y, m, d)
    except ValueError:
        return None


def _dates(line: str):
    for match in _ISO_DATE.finditer(line):
        date = _date(int(match["y"]), int(match["m"]), int(match["d"]))
        if date:
            yield match.span(), {"value": date.isoformat()}
    for match in _NUMERIC_DATE.finditer(line):
        a, b, y = int(match["a"]), int(match["b"]), int(match["y"])
        extra: dict[str, Any] = {}
        if match["sep"] == "/":
            month, day = (a, b) if a <= 12 else (b, a)
            if a <= 12 and b <= 12 and a != b:
                extra["ambiguous"] = True
        else:
            day, month = a, b
        date = _date(y, month, day)
        if date:
            yield match.span(), {"value": date.isoformat(), **extra}
    for pattern in (_MONTH_FIRST, _DAY_FIRST):
        for match in pattern.finditer(line):
            date = _date(int(match["y"]), _MONTHS[match["mon"][:3].lower()], int(match["d"]))
            if date:
                yield match.span(), {"value": date.isoformat()}


# --- money -------------------------------------------------------------------------------

_CODES = ("USD EUR GBP JPY KRW CNY CHF CAD AUD NZD HKD SGD INR BRL MXN SEK NOK DKK PLN CZK HUF "
          "RUB TRY ZAR THB VND IDR MYR PHP TWD AED SAR ILS").split()
_SYMBOLS = {
    "US$": "USD", "CA$": "CAD", "C$": "CAD", "AU$": "AUD", "A$": "AUD", "NZ$": "NZD", "HK$": "HKD",
    "S$": "SGD", "R$": "BRL", "$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY", "￥": "JPY",
    "₩": "KRW", "￦": "KRW", "₹": "INR", "원": "KRW", "円": "JPY", "元": "CNY",
}
_CODE = r"(?<![A-Za-z])(?:" + "|".join(_CODES) + r")(?![A-Za-z])"
_PREFIX_SYMBOL = r"(?<![A-Za-z])(?:US|CA|AU|NZ|HK|[CASR])\$|[$€£¥￥₩￦₹]"
# Thousands groups with , . ' or a no-break space (never a plain space: "USD 100 200" is two
# numbers); then at most two decimals.
_NUMBER = r"\d{1,3}(?:[,.'’\u00a0\u202f]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_NUMBER_END = r"(?!\d|[.,]\d)"
_MONEY_PREFIX = re.compile(r"(?P<neg>-)?(?P<cur>" + _PREFIX_SYMBOL + "|" + _CODE + r")\s?(?P<neg2>-)?"
                           r"(?P<num>" + _NUMBER + ")" + _NUMBER_END)
_MONEY_SUFFIX = re.compile(r"(?<![\w.,'’-])(?P<neg>-)?(?P<num>" + _NUMBER + r")\s?(?P<cur>[€£¥￥₩￦원円元]|"
                           + _CODE + ")")


def parse_amount(number: str) -> str | None:
    """"1.234,56" -> "1234.56", "1,234" -> "1234", "12,5" -> "12.5" (see the module's rules)."""
    text = re.sub(r"['’\u00a0\u202f]", "", number)
    decimal_sep = None
    if "." in text and "," in text:
        decimal_sep = "." if text.rfind(".") > text.rfind(",") else ","
    else:
        for sep in ".,":
            if text.count(sep) == 1 and len(text) - text.rfind(sep) - 1 != 3:
                decimal_sep = sep
    if decimal_sep:
        whole, _, fraction = text.rpartition(decimal_sep)
        text = re.sub(r"[.,]", "", whole) + "." + fraction
    else:
        text = re.sub(r"[.,]", "", text)
    try:
        return str(Decimal(text))
    except InvalidOperation:
        return None


def _money(line: str):
    for pattern in (_MONEY_PREFIX, _MONEY_SUFFIX):
        for match in pattern.finditer(line):
            amount = parse_amount(match["num"])
            if amount is None:
                continue
            if match["neg"] or (match.groupdict().get("neg2")):
                amount = "-" + amount
            symbol = match["cur"]
            currency = _SYMBOLS.get(symbol, symbol.upper())
            yield match.span(), {"value": f"{amount} {currency}", "amount": amount, "currency": currency,
                                 "symbol": symbol}


# --- emails ------------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.+%-])(?P<local>[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?)@"
                    r"(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})(?![\w-])")


def _emails(line: str):
    for match in _EMAIL.finditer(line):
        if ".." in match["local"]:
            continue
        yield match.span(), {"value": f"{match['local']}@{match['domain'].lower()}"}


# --- phones ------------------------------------------------------------------------------

_PHONE_INTL = re.compile(r"(?<![\w+])\+(?P<cc>[1-9]\d{0,2})(?:[ .-]?\(\d{1,4}\)|[ .-]?\d{1,5}){1,5}"
                         r"(?![\w]|[.,/-]\d)")
_PHONE_AREA = re.compile(r"(?<![\w(])\(\d{2,4}\) ?\d{3,4}[ .-]\d{4}(?![\w]|[.,/-]\d)")
_PHONE_DASHED = re.compile(r"(?<![\w.,/+-])(?:0\d{1,3}|[2-9]\d{2})(?P<sep>[.-])\d{3,4}(?P=sep)\d{4}"
                           r"(?![\w]|[.,/-]\d)")
_PHONE_SPACED = re.compile(r"(?<![\w.,/+-])(?:0\d{1,3}|[2-9]\d{2}) \d{3,4} \d{4}(?![\w]|[ .,/-]?\d)")
_PHONE_LABEL = re.compile(r"(?<![A-Za-z])(?:tel|telephone|phone|fax|mobile|mob|cell|ph)(?![A-Za-z])"
                          r"|전화|휴대폰|팩스", re.I)


def _phones(line: str):
    for match in _PHONE_INTL.finditer(line):
        digits = re.sub(r"\D", "", match.group())
        if 8 <= len(digits) <= 15:
            yield match.span(), {"value": "+" + digits}
    patterns = [_PHONE_AREA, _PHONE_DASHED]
    if _PHONE_LABEL.search(line):
        patterns.append(_PHONE_SPACED)
    for pattern in patterns:
        for match in pattern.finditer(line):
            digits = re.sub(r"\D", "", match.group())
            if 7 <= len(digits) <= 12:
                yield match.span(), {"value": digits}


# --- references --------------------------------------------------------------------------

_REFERENCE_LABELS = (
    ("invoice", r"invoice\s*(?:no\.?|number|num\.?|#|id)|invoice(?=\s*[:#])|inv\.?\s*(?:no\.?|#)"),
    ("purchase_order", r"purchase\s+order\s*(?:no\.?|number|#)?|(?-i:P\.?O\.?)(?:\s*(?:no\.?|number|#))?"),
    ("order", r"order\s*(?:no\.?|number|#|id)"),
    ("reference", r"reference\s*(?:no\.?|number|#|id)?|ref\.?\s*(?:no\.?|#)?"),
    ("receipt", r"receipt\s*(?:no\.?|number|#)"),
    ("quote", r"quot(?:e|ation)\s*(?:no\.?|number|#)"),
    ("transaction", r"transaction\s*(?:id|no\.?|number|#)"),
    ("booking", r"booking\s*(?:ref(?:erence)?|no\.?|number|#)"),
)
_REFERENCE = re.compile(
    r"(?<![A-Za-z])(?:" + "|".join(f"(?P<{name}>{pattern})" for name, pattern in _REFERENCE_LABELS)
    + r")(?![A-Za-z])\s*[:#.]?\s*(?P<id>(?=[A-Za-z0-9/_.-]*\d)[A-Za-z0-9][A-Za-z0-9/_.-]{1,40}[A-Za-z0-9])"
    r"(?![\w/-])", re.I)


def _references(line: str):
    for match in _REFERENCE.finditer(line):
        ident = match["id"]
        if any(p.fullmatch(ident) for p in (_ISO_DATE, _NUMERIC_DATE)):
            continue  # "Invoice: 2025-03-01" is a date, not a number
        label = next(name for name, _ in _REFERENCE_LABELS if match[name])
        yield match.span(), {"value": ident, "label": label}


# --- key: value --------------------------------------------------------------------------

_SEGMENTS = re.compile(r"\s{3,}|\t+|\s+\|\s+")
_PAIR = re.compile(r"(?P<key>[^\W\d_][\w .'/()#&-]{0,39}?)\s*[:：]\s+(?P<value>\S.*)")
_PAIR_VALUE_MAX = 200


def _pairs(line: str):
    offset = 0
    for segment in _SEGMENTS.split(line):
        start = line.find(segment, offset)
        offset = start + len(segment)
        match = _PAIR.fullmatch(segment.strip())
        if not match or len(match["key"].split()) > 6:
            continue
        value = match["value"].strip()[:_PAIR_VALUE_MAX]
        yield (start, offset), {"key": match["key"].strip(), "value": value}


# --- the detector ------------------------------------------------------------------------

_ORDER = (("email", _emails), ("reference", _references), ("money", _money), ("date", _dates),
          ("phone", _phones))


def detect_line(line: str, position: dict | None = None) -> list[dict]:
    """The fields of one line, ordered by column. ``position`` is copied into each field."""
    taken: list[tuple[int, int]] = []
    found: list[tuple[int, dict]] = []
    for kind, detector in _ORDER:
        for (start, end), extra in detector(line):
            if any(start < t_end and t_start < end for t_start, t_end in taken):
                continue
            taken.append((start, end))
            found.append((start, {"type": kind, "text": line[start:end], **extra}))
    for (start, end), extra in _pairs(line):
        found.append((start, {"type": "pair", "text": line[start:end].strip(), **extra}))
    found.sort(key=lambda item: item[0])
    out = []
    for start, field in found:
        field["position"] = {**(position or {}), "column": start}
        out.append(field)
    return out


def detect(text: str, position: dict | None = None, limit: int | None = None) -> list[dict]:
    """Fields of a text, line by line (``position["line"]`` is 1-based), at most ``limit``."""
    out: list[dict] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        out.extend(detect_line(line, {**(position or {}), "line": number}))
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


def count_by_type(fields: Iterable[dict]) -> dict[str, int]:
    counts = {kind: 0 for kind in FIELD_TYPES}
    for field in fields:
        counts[field["type"]] += 1
    return counts
