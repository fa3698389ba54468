"""Who a rate limit counts against: the signed-in user, else the client address."""
from flask import request
from flask_jwt_extended import get_jwt_identity, verify_jwt_in_request
from flask_limiter.util import get_remote_address


def rate_limit_key() -> str:
    try:
        verify_jwt_in_request(optional=True)
        identity = get_jwt_identity()
    except Exception:  # a bad token is answered by the view with a proper 401; count by address here
        identity = None
    return f"user:{identity}" if identity else f"ip:{get_remote_address()}"


def login_key() -> str:
    """Per address and username, so one attacker cannot lock everyone out of their own names."""
    username = ""
    if request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # absurdly nested JSON: the view answers 400; key by address
            body = None
        if isinstance(body, dict):
            username = str(body.get("username", ""))[:64]
    else:
        username = request.form.get("username", "")[:64]
    return f"login:{get_remote_address()}:{username.lower()}"
