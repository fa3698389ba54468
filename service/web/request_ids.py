"""X-Request-ID: accepted from the client (if it looks like an id) or generated, returned on every
answer, and carried into every log line of the request (service.log_context)."""
from __future__ import annotations

import uuid

from flask import g, request

from service import log_context


def init_app(app) -> None:
    @app.before_request
    def _take_request_id():
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if log_context.REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
        g.request_id = rid
        g.request_id_token = log_context.request_id.set(rid)

    @app.after_request
    def _return_request_id(response):
        rid = g.get("request_id")
        if rid:
            response.headers["X-Request-ID"] = rid
        return response

    @app.teardown_request
    def _forget_ids(_exc):
        for var, key in ((log_context.request_id, "request_id_token"), (log_context.user_id, "user_id_token")):
            token = g.pop(key, None)
            if token is not None:
                var.reset(token)
