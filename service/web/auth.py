"""/api/v1/auth: register, login, refresh, logout, me."""
from __future__ import annotations

import re

from flask import Blueprint, current_app
from flask_jwt_extended import (create_access_token, create_refresh_token, current_user, decode_token,
                                get_jwt, jwt_required)

from service.errors import ValidationError
from service.extensions import limiter
from service.web.http import json_body, ok
from service.web.ratelimit_keys import login_key

bp = Blueprint("auth", __name__, url_prefix="/api/v1/auth")

USERNAME = re.compile(r"[A-Za-z0-9_.-]{3,32}")   # used with fullmatch: "$" would let a final newline in
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,}")


def _users():
    return current_app.extensions["ilgun"].users


def _user_view(user: dict) -> dict:
    return {"id": user["id"], "username": user["username"], "email": user["email"], "role": user["role"]}


def _tokens(user: dict) -> dict:
    claims = {"role": user["role"]}
    return {"access_token": create_access_token(identity=user, additional_claims=claims),
            "refresh_token": create_refresh_token(identity=user, additional_claims=claims),
            "token_type": "bearer",
            "expires_in": current_app.config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds()}


def login_limit() -> str:
    return current_app.config["RATELIMIT_LOGIN"]


def check_new_account(raw_username, password, email) -> tuple[str, str, str | None]:
    """(username, password, email) for a new account, or ValidationError naming each bad field.
    The API and the register page share it."""
    username = raw_username.strip() if isinstance(raw_username, str) else ""
    if email == "":  # an HTML form's empty field
        email = None
    problems = {}
    if not USERNAME.fullmatch(username):
        problems["username"] = "3–32 letters, digits, '_', '.' or '-'"
    if not isinstance(password, str) or len(password) < current_app.config["MIN_PASSWORD_LENGTH"] \
            or len(password) > 256:
        problems["password"] = f"at least {current_app.config['MIN_PASSWORD_LENGTH']} characters (at most 256)"
    if email is not None and (not isinstance(email, str) or not EMAIL.fullmatch(email)):
        problems["email"] = "not an email address"
    if problems:
        raise ValidationError("Some fields are not valid.", details=problems)
    return username, password, email


@bp.post("/register")
@limiter.shared_limit(login_limit, scope="register", key_func=login_key)
def register():
    if not current_app.config["ALLOW_REGISTRATION"]:
        raise ValidationError("Registration is closed; ask an admin.", code="REGISTRATION_CLOSED")
    body = json_body(allow_form=True)
    username, password, email = check_new_account(body.get("username"), body.get("password"), body.get("email"))
    user = _users().create(username, password, email=email)
    return ok(_user_view(user), "Registered.", 201)


@bp.post("/login")
@limiter.shared_limit(login_limit, scope="login", key_func=login_key)
def login():
    body = json_body(allow_form=True)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
        raise ValidationError("username and password are required.",
                              details={"fields": ["username", "password"]})
    user = _users().authenticate(username, password)
    return ok(_tokens(user), "Signed in.")


@bp.post("/refresh")
@jwt_required(refresh=True)
def refresh():
    # Rotate: the refresh token used here is revoked, so a stolen one works at most once.
    claims = get_jwt()
    _users().revoke_token(claims["jti"], "refresh", current_user["id"], float(claims["exp"]))
    return ok(_tokens(current_user), "Token refreshed.")


@bp.post("/logout")
@jwt_required()
def logout():
    claims = get_jwt()
    users = _users()
    users.revoke_token(claims["jti"], claims.get("type", "access"), current_user["id"], float(claims["exp"]))
    # A refresh token sent along is revoked too, so signing out really ends the session.
    body = {}
    try:
        body = json_body()
    except ValidationError:
        pass
    refresh_token = body.get("refresh_token") if isinstance(body, dict) else None
    if isinstance(refresh_token, str):
        try:
            decoded = decode_token(refresh_token)
            if decoded.get("sub") == str(current_user["id"]) and decoded.get("type") == "refresh":
                users.revoke_token(decoded["jti"], "refresh", current_user["id"], float(decoded["exp"]))
        except Exception:
            pass  # an invalid refresh token cannot be used anyway
    return ok(None, "Signed out.")


@bp.get("/me")
@jwt_required()
def me():
    return ok(_user_view(current_user))
