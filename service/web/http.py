"""Request parsing and the success envelope shared by every JSON endpoint."""
from __future__ import annotations

from typing import Any

from flask import current_app, jsonify, request, send_file

from service.errors import ValidationError


def ok(data: Any = None, message: str = "OK", status: int = 200, headers=None):
    resp = jsonify({"success": True, "message": message, "data": data})
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def conditional(resp):
    """An ETag from the body, and 304 Not Modified when the client's If-None-Match has it: a
    page polling a job's progress downloads nothing until something changed."""
    resp.add_etag()
    resp.headers["Cache-Control"] = "private, no-cache"
    return resp.make_conditional(request)


def _depth(value, limit: int, level: int = 1) -> int:
    if level > limit:
        return level
    if isinstance(value, dict):
        return max([level] + [_depth(v, limit, level + 1) for v in value.values()])
    if isinstance(value, list):
        return max([level] + [_depth(v, limit, level + 1) for v in value])
    return level


def json_body(allow_form: bool = False) -> dict:
    """The request's JSON object, or a 400 with a stable code. Form bodies are accepted where
    ``allow_form`` (login from a plain HTML form or OAuth2-style clients)."""
    if allow_form and request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return request.form.to_dict()
    raw = request.get_data(cache=True)
    if len(raw) > current_app.config["MAX_JSON_BYTES"]:
        raise ValidationError("The JSON body is too large.", code="PAYLOAD_TOO_LARGE",
                              details={"limit": current_app.config["MAX_JSON_BYTES"]})
    if not raw.strip():
        raise ValidationError("A JSON body is required.", code="INVALID_JSON")
    if request.mimetype != "application/json":
        raise ValidationError("Send the body as application/json.", code="UNSUPPORTED_MEDIA_TYPE")
    try:
        body = current_app.json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValidationError("The body is not valid JSON.", code="INVALID_JSON",
                              details={"error": str(exc)[:200]}) from None
    if not isinstance(body, dict):
        raise ValidationError("The JSON body must be an object.", code="INVALID_JSON")
    if _depth(body, current_app.config["MAX_JSON_DEPTH"]) > current_app.config["MAX_JSON_DEPTH"]:
        raise ValidationError("The JSON body is nested too deeply.", code="JSON_TOO_DEEP")
    return body


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a whole number.", details={"field": name}) from None
    if not lo <= value <= hi:
        raise ValidationError(f"{name} must be between {lo} and {hi}.", details={"field": name})
    return value


def paginated(items: list, total: int, page: int, page_size: int) -> dict:
    return {"items": items, "page": page, "page_size": page_size, "total": total,
            "total_pages": (total + page_size - 1) // page_size if total else 0}


def attachment(path, meta: dict):
    """A stored file as a download: ``meta`` has its name, content_type and sha256 (the ETag, or
    one from the file when unknown). send_file with conditional=True answers Range (206/416),
    If-None-Match and If-Modified-Since (304) and streams the file from disk."""
    resp = send_file(path, mimetype=meta["content_type"], as_attachment=True, download_name=meta["name"],
                     conditional=True, etag=meta["sha256"] or True, max_age=0)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
