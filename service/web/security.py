"""JWT wiring: who the token's user is, whether it was revoked, and JSON answers for token errors."""
from __future__ import annotations

import time

from flask import current_app, g

from service import log_context
from service.extensions import jwt
from service.web.errors import error_response

SEEN_EVERY = 600.0  # seconds between two updates of a user's last_seen_at


def _users():
    return current_app.extensions["ilgun"].users


def init_app(app) -> None:
    @jwt.user_identity_loader
    def _identity(user):
        return str(user["id"] if isinstance(user, dict) else user)

    def _token_owner(payload) -> tuple[dict | None, bool]:
        """The blocklist check and the user lookup share one read per request."""
        cached = g.get("ilgun_token_owner")
        if cached is not None and cached[0] == payload["jti"]:
            return cached[1]
        try:
            user_id = int(payload["sub"])
        except (TypeError, ValueError):
            answer = (None, _users().is_revoked(payload["jti"]))
        else:
            answer = _users().token_owner(user_id, payload["jti"])
        g.ilgun_token_owner = (payload["jti"], answer)
        return answer

    @jwt.user_lookup_loader
    def _lookup(_header, payload):
        user, _revoked = _token_owner(payload)
        if not (user and user["is_active"]):
            return None
        if "user_id_token" not in g:  # every log line of this request names the user
            g.user_id_token = log_context.user_id.set(user["id"])
            # "active in the last 24 h" counts users who use the service, not only those who
            # typed a password: at most one write per user per SEEN_EVERY seconds
            if (user.get("last_seen_at") or 0) < time.time() - SEEN_EVERY:
                _users().touch(user["id"])
        return user

    @jwt.token_in_blocklist_loader
    def _revoked(_header, payload) -> bool:
        return _token_owner(payload)[1]

    @jwt.expired_token_loader
    def _expired(_header, _payload):
        return error_response(401, "TOKEN_EXPIRED", "The token has expired; refresh it or sign in again.")

    @jwt.invalid_token_loader
    def _invalid(reason):
        return error_response(401, "TOKEN_INVALID", "The token is not valid.", {"reason": reason})

    @jwt.unauthorized_loader
    def _missing(reason):
        if "CSRF" in reason:  # flask-jwt-extended sends its CSRFError here too
            return error_response(403, "CSRF_FAILED", "A cookie-authenticated request must send the "
                                  "csrf_access_token cookie's value in the X-CSRF-TOKEN header.", {"reason": reason})
        return error_response(401, "AUTH_REQUIRED", "Sign in first: send an Authorization: Bearer token.",
                              {"reason": reason})

    @jwt.revoked_token_loader
    def _revoked_answer(_header, _payload):
        return error_response(401, "TOKEN_REVOKED", "The token was revoked; sign in again.")

    @jwt.user_lookup_error_loader
    def _no_user(_header, _payload):
        return error_response(401, "USER_NOT_FOUND", "The token's user no longer exists or is disabled.")

    @jwt.needs_fresh_token_loader
    def _not_fresh(_header, _payload):
        return error_response(401, "FRESH_TOKEN_REQUIRED", "Sign in again to do this.")

    @jwt.token_verification_failed_loader
    def _failed(_header, _payload):
        return error_response(401, "TOKEN_INVALID", "The token was refused.")
