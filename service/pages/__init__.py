"""Server-rendered pages: sign in, my jobs, a job's live progress and results, submit forms for
every kind, the admin dashboard. They call the same JobService as the JSON API (never SQL), sign in
with JWT cookies (service.web.cookie_auth), and work without JavaScript; static/ilgun.js only adds
live progress and confirmation dialogs. Every asset is served by the app itself: no CDN."""
from __future__ import annotations

from flask import current_app, render_template

from service.pages.headers import page_headers
from service.web import cookie_auth


def init_app(app) -> None:
    from service.pages import admin, auth, jobs, presenters
    from service.web import errors
    cookie_auth.init_app(app)
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", 3600)
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False  # only the sign-in forms use Flask-WTF's tokens
    presenters.init_app(app)
    for bp in (auth.bp, jobs.bp, admin.bp):
        app.register_blueprint(bp)
    errors.html_error_page = render_error_page


def render_error_page(status: int, code: str, message: str):
    """The page shown for an error: the message and code, never a stack trace."""
    resp = current_app.make_response((render_template("pages/error.html", status=status, code=code,
                                                      message=message), status))
    return page_headers(resp)
