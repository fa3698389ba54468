"""The OpenAPI document (GET /api/v1/openapi.json) and Swagger UI (GET /api/docs).

Swagger UI's files come from the ``swagger-ui-bundle`` package and are served by the app
itself (no CDN). The page loads no inline script or style, so its Content-Security-Policy
allows only this origin (plus ``data:`` images, which Swagger UI's stylesheet uses for icons, and
``blob:`` images, its preview of an image a "Try it out" request fetched).
"""
from __future__ import annotations

import threading
from html import escape

from flask import Blueprint, abort, current_app, send_from_directory, url_for
from swagger_ui_bundle import swagger_ui_path

from service.web.openapi_doc import build_document

bp = Blueprint("openapi", __name__)

# Only what the page uses: no source maps, no demo index.html.
ASSETS = frozenset({"swagger-ui.css", "index.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"})
ASSET_MAX_AGE = 24 * 3600
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_EXTENSION_KEY = "ilgun_openapi"
_build_lock = threading.Lock()

INIT_JS = """\
"use strict";
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null,
    tryItOutEnabled: false
  });
});
"""

PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ilgun API</title>
<link rel="stylesheet" href="{css}">
<link rel="stylesheet" href="{index_css}">
<link rel="icon" type="image/png" href="{icon}" sizes="32x32">
</head>
<body>
<div id="swagger-ui" data-spec-url="{spec}"></div>
<script src="{bundle}"></script>
<script src="{init}"></script>
</body>
</html>
"""


def document_json(app) -> bytes:
    """The document for ``app``, built once per app and kept as JSON bytes."""
    cached = app.extensions.get(_EXTENSION_KEY)
    if cached is None:
        with _build_lock:
            cached = app.extensions.get(_EXTENSION_KEY)
            if cached is None:
                cached = app.json.dumps(build_document(app.config)).encode()
                app.extensions[_EXTENSION_KEY] = cached
    return cached


@bp.get("/api/v1/openapi.json")
def openapi_json():
    return current_app.response_class(document_json(current_app), mimetype="application/json")


@bp.get("/api/docs")
def docs():
    def asset(name: str) -> str:
        return escape(url_for("openapi.docs_asset", filename=name))
    html = PAGE.format(css=asset("swagger-ui.css"), index_css=asset("index.css"), icon=asset("favicon-32x32.png"),
                       bundle=asset("swagger-ui-bundle.js"), init=escape(url_for("openapi.docs_init")),
                       spec=escape(url_for("openapi.openapi_json")))
    resp = current_app.response_class(html, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = DOCS_CSP
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/api/docs/init.js")
def docs_init():
    resp = current_app.response_class(INIT_JS, mimetype="text/javascript")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/api/docs/static/<path:filename>")
def docs_asset(filename: str):
    if filename not in ASSETS:
        abort(404)
    # send_from_directory refuses anything outside the folder as well.
    return send_from_directory(str(swagger_ui_path), filename, max_age=ASSET_MAX_AGE)


@bp.after_request
def _nosniff(resp):
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    return resp
