"""Sign in, register and sign out as pages. Validation is the API's (service.web.auth.check_new_account);
the forms are protected by Flask-WTF's CSRF token (no JWT exists yet to double-submit)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_wtf.csrf import generate_csrf, validate_csrf
from wtforms.validators import ValidationError as WTFValidationError

from service.errors import AlreadyExists, AuthFailed, ValidationError
from service.extensions import limiter
from service.pages.headers import page_headers
from service.web import cookie_auth
from service.web.auth import check_new_account, login_limit
from service.web.ratelimit_keys import login_key

bp = Blueprint("pages_auth", __name__)
bp.after_request(page_headers)


def _users():
    return current_app.extensions["ilgun"].users


def _check_anonymous_csrf() -> None:
    try:
        validate_csrf(request.form.get("csrf_token"))
    except WTFValidationError:
        raise cookie_auth.PageCSRFError() from None


def _safe_next(target: str | None) -> str:
    """Only a path on this site: an open redirect to another host would make the sign-in page a
    phishing tool."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("pages_jobs.job_list")
    parts = urlsplit(target)
    return url_for("pages_jobs.job_list") if parts.scheme or parts.netloc else target


@bp.get("/")
def home():
    return redirect(url_for("pages_jobs.job_list") if cookie_auth.page_user() else url_for("pages_auth.login"))


@bp.route("/login", methods=["GET", "POST"])
@limiter.shared_limit(login_limit, scope="login", key_func=login_key, methods=["POST"])
def login():
    if request.method == "GET" and cookie_auth.page_user():
        return redirect(_safe_next(request.args.get("next")))
    error, status = None, 200
    if request.method == "POST":
        _check_anonymous_csrf()
        username, password = request.form.get("username", ""), request.form.get("password", "")
        try:
            if not username or not password:
                raise ValidationError("Enter your username and password.")
            user = _users().authenticate(username, password)
        except (AuthFailed, ValidationError) as exc:
            error, status = exc.message, (401 if isinstance(exc, AuthFailed) else 400)
        else:
            resp = redirect(_safe_next(request.form.get("next")))
            flash(f"Signed in as {user['username']}.", "info")
            return cookie_auth.sign_in(resp, user)
    return render_template("pages/login.html", error=error, csrf_token=generate_csrf(),
                           next=request.values.get("next", ""), username=request.form.get("username", "")), status


@bp.route("/register", methods=["GET", "POST"])
@limiter.shared_limit(login_limit, scope="register", key_func=login_key, methods=["POST"])
def register():
    closed = not current_app.config["ALLOW_REGISTRATION"]
    errors, message, status = {}, None, 200
    if request.method == "POST" and not closed:
        _check_anonymous_csrf()
        form = request.form
        try:
            username, password, email = check_new_account(form.get("username"), form.get("password"),
                                                          form.get("email") or None)
            if form.get("password") != form.get("password_again"):
                raise ValidationError("Some fields are not valid.",
                                      details={"password_again": "the two passwords differ"})
            user = _users().create(username, password, email=email)
        except ValidationError as exc:
            message, errors, status = exc.message, exc.details or {}, 400
        except AlreadyExists as exc:
            message, errors, status = exc.message, {"username": "taken"}, 409
        else:
            flash(f"Welcome, {user['username']}: your account is ready.", "info")
            return cookie_auth.sign_in(redirect(url_for("pages_jobs.job_list")), user)
    return render_template("pages/register.html", closed=closed, errors=errors, message=message,
                           csrf_token=generate_csrf(), form=request.form), (403 if closed else status)


@bp.post("/logout")
@cookie_auth.login_required()
def logout():
    resp = redirect(url_for("pages_auth.login"))
    cookie_auth.sign_out(resp, _users())
    flash("Signed out.", "info")
    return resp
