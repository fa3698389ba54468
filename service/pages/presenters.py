"""What templates need beyond the job itself: readable numbers, the kinds a user may submit, which
result view a kind has, and bounded reads of a job's result files for those views."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from flask import current_app, g
from jinja2 import TemplateNotFound

from service.errors import IlgunError

TITLES = {"download": "Download a URL", "ocr": "Read text from a scan or PDF (OCR)",
          "report": "Report on an Excel file, PDF or image", "crawl": "Crawl a website",
          "cefr": "Grade English text by CEFR level", "sleep": "Sleep (a test job)"}
STATUS_LABELS = {"queued": "Queued", "running": "Running", "succeeded": "Succeeded", "failed": "Failed",
                 "cancelled": "Cancelled"}
MAX_VIEW_BYTES = 2 * 1024 * 1024   # a result view reads at most this much of one file
MAX_VIEW_ROWS = 200                # and at most this many rows of a table


def init_app(app) -> None:
    from service.web import cookie_auth
    app.jinja_env.filters.update(filesize=filesize, seconds=seconds, when=when, status_label=STATUS_LABELS.get)
    app.jinja_env.globals.update(kind_title=kind_title, csrf_field_value=cookie_auth.csrf_value,
                                 signed_in_user=lambda: g.get("page_user"))
    register_result_helpers(app)


def kind_title(name: str) -> str:
    return TITLES.get(name, name.replace("_", " ").capitalize())


def filesize(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def seconds(value: float | None) -> str:
    """An ETA or a duration the way people say it: 45 s, 3 min 20 s, 2 h 5 min."""
    if value is None:
        return "–"
    value = max(0, int(round(value)))
    if value < 60:
        return f"{value} s"
    if value < 3600:
        return f"{value // 60} min {value % 60} s" if value % 60 else f"{value // 60} min"
    return f"{value // 3600} h {value % 3600 // 60} min"


def when(iso: str | None) -> str:
    if not iso:
        return "–"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def params_schema(kind_name: str) -> dict:
    from service.web.openapi_schemas import KIND_PARAMS
    return KIND_PARAMS.get(kind_name, {"type": "object", "properties": {}})


def submittable_kinds(viewer) -> list[dict]:
    kinds = current_app.extensions["ilgun"].kinds
    everyone_sleeps = current_app.config.get("SLEEP_KIND_FOR_EVERYONE")
    out = []
    for name, kind in sorted(kinds.items()):
        if kind.admin_only and viewer["role"] != "admin" and not (name == "sleep" and everyone_sleeps):
            continue
        out.append({"name": name, "title": kind_title(name), "description": kind.description,
                    "upload": "file_id" in params_schema(name).get("required", [])})
    return out


def result_template(kind_name: str) -> str:
    """``results/<kind>.html`` when the kind has a view of its own, else the generic one: a new
    kind's view is one template."""
    name = f"results/{kind_name}.html"
    try:
        current_app.jinja_env.get_template(name)
        return name
    except TemplateNotFound:
        return "results/_generic.html"


class JobFiles:
    """Bounded reads of one job's result files for its result view, through the same owner check
    as downloads (JobService.file_path)."""

    def __init__(self, service, viewer, job: dict):
        self.service, self.viewer, self.job = service, viewer, job
        self.names = {f["name"] for f in job["files"]}

    def _path(self, name: str) -> Path | None:
        if name not in self.names:
            return None
        try:
            return self.service.file_path(self.viewer, self.job["id"], name)[0]
        except IlgunError:
            return None

    def text(self, name: str, limit: int = MAX_VIEW_BYTES) -> str | None:
        path = self._path(name)
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")

    def json(self, name: str):
        path = self._path(name)
        if path is None or path.stat().st_size > MAX_VIEW_BYTES:
            return None
        try:
            return json.loads(path.read_bytes())
        except ValueError:
            return None

    def jsonl(self, name: str, limit: int = MAX_VIEW_ROWS) -> list[dict]:
        """The first ``limit`` rows (each line a JSON object); a bad line is skipped."""
        path = self._path(name)
        rows: list[dict] = []
        if path is None:
            return rows
        with open(path, "rb") as f:
            for line in f:
                if len(rows) >= limit:
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
        return rows

    def has(self, name: str) -> bool:
        return name in self.names


# -- helpers of the result views (templates/results/) --------------------------------------------
def register_result_helpers(app) -> None:
    app.jinja_env.tests["web_url"] = is_web_url
    app.jinja_env.filters["percent"] = percent


def is_web_url(value) -> bool:
    """True for an http(s) URL with a host: the only URLs from a result that a view makes a link
    (a crawled ``javascript:`` or ``data:`` URL stays text)."""
    from urllib.parse import urlsplit
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def percent(share: float | None, digits: int = 1) -> str:
    """A share from 0 to 1 as a percentage: 0.6305 → "63.0%"."""
    if share is None:
        return "–"
    return f"{share * 100:.{digits}f}%"
