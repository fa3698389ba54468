"""One JSON error shape for every failure, and the one table from domain error to HTTP status."""
from __future__ import annotations

import logging

from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from service import errors as e

log = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[e.IlgunError], int]] = [
    (e.UnsupportedFileType, 415),
    (e.QuotaExceeded, 413),
    (e.PathNotAllowed, 400),
    (e.UrlNotAllowed, 400),
    (e.ValidationError, 400),
    (e.AuthFailed, 401),
    (e.Forbidden, 403),
    (e.NotFound, 404),
    (e.AlreadyExists, 409),
    (e.InvalidState, 409),
    (e.ConcurrencyLimit, 409),
    (e.QueueFull, 429),
    (e.ServiceBusy, 503),
    (e.ModelUnavailable, 503),
    (e.StorageFull, 507),
    (e.IlgunError, 400),
]

HTTP_CODES = {400: "BAD_REQUEST", 401: "AUTH_REQUIRED", 403: "FORBIDDEN", 404: "NOT_FOUND",
              405: "METHOD_NOT_ALLOWED", 406: "NOT_ACCEPTABLE", 409: "CONFLICT", 411: "LENGTH_REQUIRED",
              412: "PRECONDITION_FAILED", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
              416: "RANGE_NOT_SATISFIABLE", 429: "RATE_LIMITED", 431: "HEADERS_TOO_LARGE",
              500: "INTERNAL_ERROR", 503: "SERVICE_UNAVAILABLE", 507: "DISK_FULL"}


# Set by service.pages: renders an error as a page (status, code, message) for browsers.
html_error_page = None


def wants_html() -> bool:
    """A browser asking for a page rather than an API client: the error is shown as a page. The
    API, /metrics and anything that prefers JSON keep the JSON shape."""
    if html_error_page is None or request.path.startswith("/api/") or request.path == "/metrics":
        return False
    accept = request.accept_mimetypes
    return accept.best_match(["application/json", "text/html"]) == "text/html" and \
        accept["text/html"] > accept["application/json"]


def error_response(status: int, code: str, message: str, details=None, headers=None):
    if wants_html():
        resp = html_error_page(status, code, message)
        for k, v in (headers or {}).items():
            resp.headers[k] = v
        return resp
    resp = jsonify({"success": False, "error_code": code, "message": message, "details": details})
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def status_for(exc: e.IlgunError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 400


DATABASE_FULL_MESSAGE = ("The database's disk is full; nothing was kept. Try again once space has been "
                         "freed.")


def init_app(app) -> None:
    @app.errorhandler(e.IlgunError)
    def _domain(exc: e.IlgunError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return error_response(status_for(exc), exc.code, exc.message, exc.details, headers)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        code = HTTP_CODES.get(status, "HTTP_ERROR")
        message = exc.description or exc.name
        if status == 429:
            message = f"Too many requests: limit {exc.description}." if exc.description else "Too many requests."
        headers = {k: v for k, v in exc.get_headers()
                   if k.lower() in {"retry-after", "allow", "www-authenticate", "content-range"}}
        return error_response(status, code, message, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if e.database_full(exc):
            # SQLite rolled the write back: nothing was kept, and the client may retry later
            log.error("the database's disk is full: %s", exc)
            return _domain(e.StorageFull(DATABASE_FULL_MESSAGE))
        # Never a stack trace to the client; the log has it.
        log.exception("unhandled error")
        return error_response(500, "INTERNAL_ERROR", "An internal error occurred.")
