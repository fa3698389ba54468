"""Sign-in for the server-rendered pages: JWTs in cookies with flask-jwt-extended's CSRF
double-submit protection. The API's Authorization header keeps working unchanged.

One CSRF value per sign-in: the access and the refresh token carry the same ``csrf`` claim, and
access tokens minted later from the refresh cookie keep it. So a form rendered an hour ago (in
another tab, say) still posts after the access token was renewed, and an expired access token
falls back to the refresh token with the very same form field — while a post from another site,
which cannot read the ``csrf_access_token`` cookie, never carries it.
"""
from __future__ import annotations

import time
import uuid
from functools import wraps

from flask import abort, current_app, g, redirect, request, url_for
from flask_jwt_extended import (create_access_token, create_refresh_token, get_jwt, get_jwt_request_location,
                                set_access_cookies, set_refresh_cookies, unset_jwt_cookies, verify_jwt_in_request)
from flask_jwt_extended.exceptions import CSRFError, JWTExtendedException
from jwt.exceptions import PyJWTError

from service.errors import Forbidden

# An access token read from a cookie with less than this share of its lifetime left is renewed on
# the way out: a page that polls a job keeps its session alive without a reload.
RENEW_AT_FRACTION = 0.5


class PageCSRFError(Forbidden):
    def __init__(self):
        super().__init__("The form was not sent from this site's page, or it is too old: reload the page and "
                         "try again.", code="CSRF_FAILED")


def init_app(app) -> None:
    app.config.update(
        JWT_TOKEN_LOCATION=["headers", "cookies"],
        JWT_COOKIE_CSRF_PROTECT=True,
        JWT_CSRF_CHECK_FORM=True,             # plain HTML forms send the csrf_token field
        JWT_COOKIE_SECURE=bool(app.config["COOKIE_SECURE"]),
        JWT_COOKIE_SAMESITE="Lax",
        JWT_SESSION_COOKIE=False,              # survives a browser restart, until the refresh token expires
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=bool(app.config["COOKIE_SECURE"]),
        SESSION_COOKIE_HTTPONLY=True,
    )
    app.after_request(_renew_access_cookie)


def sign_in(resp, user: dict):
    """Set both cookies for ``user`` on ``resp``: the tokens share one CSRF value."""
    claims = {"role": user["role"], "csrf": uuid.uuid4().hex}
    set_access_cookies(resp, create_access_token(identity=user, additional_claims=claims), max_age=_cookie_age())
    set_refresh_cookies(resp, create_refresh_token(identity=user, additional_claims=claims), max_age=_cookie_age())
    return resp


def _cookie_age() -> int:
    """Both cookies live as long as the refresh token: an expired access token in its cookie is
    how the page knows to mint a new one from the refresh token."""
    return int(current_app.config["JWT_REFRESH_TOKEN_EXPIRES"].total_seconds())


def sign_out(resp, users) -> None:
    """Revoke whichever of the cookies' tokens are still valid, then clear the cookies."""
    from flask_jwt_extended import decode_token
    g.signed_out = True  # no renewed access cookie on the way out
    for name in (current_app.config["JWT_ACCESS_COOKIE_NAME"], current_app.config["JWT_REFRESH_COOKIE_NAME"]):
        token = request.cookies.get(name)
        if not token:
            continue
        try:
            claims = decode_token(token, allow_expired=True)
            users.revoke_token(claims["jti"], claims.get("type", "access"), int(claims["sub"]), float(claims["exp"]))
        except (PyJWTError, JWTExtendedException, KeyError, ValueError):
            pass  # a forged or foreign cookie grants nothing; it is cleared below
    unset_jwt_cookies(resp)


def page_user() -> dict | None:
    """The signed-in user of a page request, or None. For POSTs this also checks the CSRF field
    (PageCSRFError). An expired or missing access cookie falls back to the refresh cookie."""
    if "page_user" in g:
        return g.page_user
    from flask_jwt_extended import current_user
    user = None
    for refresh in (False, True):
        try:
            verify_jwt_in_request(refresh=refresh, locations=["cookies"])
        except CSRFError:
            raise PageCSRFError() from None
        except (JWTExtendedException, PyJWTError):
            continue
        user = current_user
        break
    g.page_user = user
    return user


def csrf_value() -> str:
    """The CSRF field value for forms on this page (the signed-in session's)."""
    return get_jwt().get("csrf", "")


def login_required(admin: bool = False):
    """For page views: anonymous visitors go to the sign-in page (coming back after); a non-admin
    on an admin page gets a 404 page, as the API answers for what is not theirs."""
    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            user = page_user()
            if user is None:
                if request.method != "GET":
                    raise PageCSRFError()  # a post with no session: nothing to post as
                return redirect(url_for("pages_auth.login", next=request.full_path.rstrip("?")))
            if admin and user["role"] != "admin":
                abort(404)
            return view(*args, **kwargs)
        return wrapper
    return decorate


def _renew_access_cookie(resp):
    """A cookie session signed in through its refresh token, or whose access token is past half its
    life, gets a fresh access token carrying the same CSRF value."""
    try:
        if get_jwt_request_location() != "cookies":
            return resp
        claims = get_jwt()
    except (RuntimeError, KeyError):
        return resp
    if not claims or resp.status_code == 401 or "csrf" not in claims:
        return resp
    lifetime = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds()
    stale = claims.get("type") == "refresh" or claims["exp"] - time.time() < lifetime * RENEW_AT_FRACTION
    if stale and not g.get("signed_out"):
        from flask_jwt_extended import current_user
        user = current_user
        if user:
            token = create_access_token(identity=user, additional_claims={"role": user["role"],
                                                                          "csrf": claims["csrf"]})
            set_access_cookies(resp, token, max_age=_cookie_age())
    return resp
