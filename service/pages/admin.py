"""The admin dashboard: users, jobs by kind and status, queue depth, the last 24 hours as a chart,
and the live workers with what each executor slot runs. Read-only; admins only (others get a
404 page, visitors who are not signed in the sign-in page)."""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, current_app, render_template
from flask_jwt_extended import current_user

from service.pages import charts
from service.pages.headers import page_headers
from service.web import cookie_auth

bp = Blueprint("pages_admin", __name__)
bp.after_request(page_headers)


def _svc():
    return current_app.extensions["ilgun"]


@bp.get("/admin")
@cookie_auth.login_required(admin=True)
def dashboard():
    board = _svc().dashboard(current_user)
    chart = charts.hourly_stacked_bars(board["hours"])
    as_of = datetime.fromtimestamp(board["now"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return render_template("pages/admin.html", board=board, chart=chart, as_of=as_of)
