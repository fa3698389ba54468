"""gunicorn's access and error logs as one JSON object per line (LOG_FORMAT=json, the default).

Why not gunicorn's own formatter: it builds a dict of every request header, response header
and WSGI environ entry for each request to fill an Apache-style format string — about 7 % of a
worker's CPU in the engine benchmark — and its lines are not machine-readable. This writes the
fields an operator filters on, and nothing else. Enabled in gunicorn.conf.py (logger_class).
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from gunicorn import glogging


class JsonAccessLogger(glogging.Logger):
    def setup(self, cfg):
        """gunicorn's own error log (master and worker lifecycle: booting, timeouts, signals) in
        the app's JSON shape too, unless LOG_FORMAT=text or the operator gave a logging config."""
        super().setup(cfg)
        from config import load_config
        from service.log_context import JsonFormatter

        if load_config()["LOG_FORMAT"] != "json" or cfg.logconfig_dict or cfg.logconfig_json or cfg.logconfig:
            return
        for handler in self.error_log.handlers:
            if getattr(handler, "_gunicorn", False):
                handler.setFormatter(JsonFormatter())

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        record = {
            "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "level": "INFO",
            "logger": "gunicorn.access",
            "remote": environ.get("REMOTE_ADDR"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("RAW_URI") or environ.get("PATH_INFO"),
            "status": int(status) if str(status).isdigit() else status,
            "bytes": getattr(resp, "sent", None),
            "ms": round(request_time.total_seconds() * 1000, 2),
            "request_id": _header(resp, "x-request-id") or environ.get("HTTP_X_REQUEST_ID"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "pid": os.getpid(),
        }
        try:
            self.access_log.info(json.dumps(record, default=str))
        except Exception:  # gunicorn's own behaviour: a logging failure never fails the request
            self.exception("access log")


def _header(resp, name: str) -> str | None:
    """A response header (the app's X-Request-ID, which it generates when the client sent none)."""
    for key, value in getattr(resp, "headers", None) or ():
        if key.lower() == name:
            return value
    return None
