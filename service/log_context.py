"""Structured logs: one JSON object per line, with the request id, user id and job id where known.

The ids travel in context variables, so any logger anywhere (the store, a kind, a library)
gets them without passing them around: the web layer sets the request's (request_id, user_id)
for the duration of a request, the dispatcher sets job_id while it runs a job. Free of Flask.
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import re
from datetime import datetime, timezone

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("ilgun_request_id", default=None)
user_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("ilgun_user_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("ilgun_job_id", default=None)

# An incoming X-Request-ID is kept only if it looks like an id (it is echoed and logged).
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": os.getpid(),
        }
        for key, var in (("request_id", request_id), ("user_id", user_id), ("job_id", job_id)):
            value = var.get()
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def configure(level: str, fmt: str) -> None:
    """Root logging to stderr as JSON lines (``fmt="json"``) or plain text (``"text"``). Like
    logging.basicConfig, it adds its handler only where nobody configured the root logger (a test
    runner's capture, an embedding application's handlers stay as they are)."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "ilgun", False)]
    if not ours and not root.handlers:
        handler = logging.StreamHandler()
        handler.ilgun = True
        root.addHandler(handler)
        ours = [handler]
    for handler in ours:
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.setLevel(level)
