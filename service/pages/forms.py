"""Submit forms built from each kind's params schema (the OpenAPI document's, which tests keep equal
to what the kind's validate() accepts), and the form's answer turned back into params. A new kind
gets its form without a template; the kind's validate() stays the only judge of the values."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from service.errors import ValidationError

# Set by the server, never by the user.
HIDDEN = {"file_name"}
UPLOAD = "file_id"


@dataclass
class Field:
    name: str
    widget: str               # text, url, number, checkbox, select, lines, pairs, textarea, file
    label: str
    help: str = ""
    required: bool = False
    default: Any = None
    options: list[str] = field(default_factory=list)
    step: str = "any"
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None


# Labels and help for people; the schema's descriptions are written for API clients (error codes).
FRIENDLY = {
    "url": ("URL", "An http:// or https:// address."),
    "urls": ("Start URLs", "Several start addresses instead of one URL."),
    "filename": ("Save as", "A plain file name; by default the server's or the URL's name."),
    "sha256": ("Expected SHA-256", "64 hex digits: the job fails if the file differs."),
    "text": ("Text", "English text to grade."),
    "engine": ("OCR engine", "PaddleOCR (default) or Tesseract."),
    "lang": ("Languages (Tesseract)", "Tesseract language codes such as eng, kor or eng+kor."),
    "force_ocr": ("OCR every page", "Read PDF pages with OCR even when they have a text layer."),
    "max_pages": ("Max pages", ""),
    "max_depth": ("Max link depth", "0 reads the start pages only."),
    "allowed_domains": ("Allowed domains", "Follow links to these domains (default: the start URLs' hosts)."),
    "include": ("Only follow links matching", "Regular expressions (RE2)."),
    "exclude": ("Never follow links matching", "Regular expressions (RE2)."),
    "extract": ("Extract", "CSS selectors applied to every page."),
    "respect_robots": ("Obey robots.txt", ""),
    "delay": ("Delay between requests (s)", "Seconds between two requests to one host."),
    "concurrency": ("Parallel requests", ""),
    "ocr": ("Read images with OCR", "OCR for images and PDF pages without text."),
    "include_gps": ("Include GPS location", "Put a photo's EXIF location in the report."),
    "textline_orientation": ("Detect rotated text lines", "Needs the text line orientation model."),
}
_CODE = re.compile(r"`([^`]*)`")


def _label(name: str) -> str:
    return FRIENDLY.get(name, (name.replace("_", " ").capitalize(), ""))[0]


def _help(name: str, description: str) -> str:
    if name in FRIENDLY and FRIENDLY[name][1]:
        return FRIENDLY[name][1]
    return _CODE.sub(r"\1", description) if name not in FRIENDLY else ""


def _base(schema: dict) -> dict:
    """The first typed alternative of an anyOf (e.g. sleep's ``fail``), with the enum of all."""
    if "anyOf" not in schema:
        return schema
    enum: list = []
    for alt in schema["anyOf"]:
        enum += [v for v in alt.get("enum", []) if v is not None]
    typed = next((a for a in schema["anyOf"] if "type" in a), {})
    return {**typed, "enum": enum} if enum else typed


def _widget(name: str, schema: dict) -> tuple[str, dict]:
    s = _base(schema)
    kind = s.get("type")
    if name == UPLOAD:
        return "file", s
    if s.get("enum"):
        return "select", s
    if kind == "boolean":
        return "checkbox", s
    if kind in ("integer", "number"):
        return "number", s
    if kind == "array":
        return "lines", s
    if kind == "object":
        return "pairs", s
    if name in ("url",):
        return "url", s
    if name == "text" or (s.get("maxLength") or 0) > 5000:
        return "textarea", s
    return "text", s


def fields_for(schema: dict) -> list[Field]:
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        if name in HIDDEN:
            continue
        widget, s = _widget(name, prop)
        help_text = _help(name, prop.get("description", "") or s.get("description", ""))
        if widget == "lines":
            help_text = (help_text + " One per line.").strip()
        if widget == "pairs":
            help_text = (help_text + " One per line as name: selector (start with * for every match).").strip()
        out.append(Field(
            name=name, widget=widget, label=_label(name), help=help_text, required=name in required,
            default=prop.get("default", s.get("default")), options=[str(v) for v in s.get("enum", [])],
            step="1" if s.get("type") == "integer" else "any", minimum=s.get("minimum"), maximum=s.get("maximum"),
            max_length=s.get("maxLength")))
    return out


def _number(f: Field, raw: str):
    try:
        return int(raw) if f.step == "1" else float(raw)
    except ValueError:
        raise ValidationError("Some fields are not valid.",
                              details={f.name: "a whole number" if f.step == "1" else "a number"}) from None


def _pairs(f: Field, raw: str) -> dict:
    out: dict[str, Any] = {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        name, sep, selector = line.partition(":")
        name, selector = name.strip(), selector.strip()
        if not sep or not name.lstrip("*") or not selector:
            raise ValidationError("Some fields are not valid.", details={f.name: f"'{line.strip()[:60]}' is not "
                                                                                 "name: selector"})
        if name.startswith("*"):
            out[name[1:].strip()] = {"selector": selector, "all": True}
        else:
            out[name] = selector
    return out


def params_from_form(fields: list[Field], form) -> dict:
    """The params a filled-in form means: empty fields are left out (the kind's defaults apply),
    checkboxes are sent either way (an unticked box is false, not "default")."""
    params: dict[str, Any] = {}
    for f in fields:
        if f.widget == "file":
            continue
        if f.widget == "checkbox":
            params[f.name] = f.name in form
            continue
        raw = (form.get(f.name) or "").strip() if f.widget not in ("lines", "pairs", "textarea") \
            else form.get(f.name) or ""
        if not raw.strip():
            continue
        if f.widget == "number":
            params[f.name] = _number(f, raw)
        elif f.widget == "lines":
            params[f.name] = [line.strip() for line in raw.splitlines() if line.strip()]
        elif f.widget == "pairs":
            params[f.name] = _pairs(f, raw)
        else:
            params[f.name] = raw
    return params
