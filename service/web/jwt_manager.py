"""flask-jwt-extended's JWTManager with a cache of verified tokens.

Why: every authenticated request decoded its bearer token three times (claims unverified,
header unverified, then verified with the HMAC) — about a tenth of a gunicorn worker's CPU in
the engine benchmark, for a token a client typically sends hundreds of times. A token string
that was verified with the current key, audience and issuer is not verified again until it
expires: its expiry (and not-before) are re-checked on every hit against the same leeway, and a
different CSRF value or key is a miss. Revocation and the user lookup are not cached (they run
on every request, see security.py).

The header that ``verify_jwt_in_request`` decodes on its own after the claims (a base64 and a
JSON parse per request, ~3 % of a worker's CPU there) is cached per token string the same way
(``cached_unverified_header``, installed in flask-jwt-extended's view_decorators module; a test
checks it is still the function that module calls).
"""
from __future__ import annotations

import functools
import threading
import time

import jwt as pyjwt
from flask_jwt_extended import JWTManager
from flask_jwt_extended import view_decorators
from flask_jwt_extended.config import config

CACHE_SIZE = 4096


@functools.lru_cache(maxsize=CACHE_SIZE)
def _header_of(encoded_token: str) -> tuple:
    return tuple(pyjwt.get_unverified_header(encoded_token).items())


def cached_unverified_header(encoded_token: str) -> dict:
    """flask_jwt_extended.utils.get_unverified_jwt_headers, remembered per token string (a
    fresh dict each time: callers may change it). Called after the claims were verified, so
    only verified tokens fill the cache; a malformed one raises as before and is not kept."""
    return dict(_header_of(encoded_token))


view_decorators.get_unverified_jwt_headers = cached_unverified_header


class CachingJWTManager(JWTManager):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._verified: dict[tuple, dict] = {}
        self._verified_lock = threading.Lock()

    def _decode_jwt_from_config(self, encoded_token: str, csrf_value=None, allow_expired: bool = False) -> dict:
        key = (encoded_token, csrf_value, allow_expired, config.decode_key, tuple(config.decode_algorithms),
               str(config.decode_audience), config.decode_issuer)
        claims = self._verified.get(key)
        if claims is not None and self._still_valid(claims, allow_expired):
            return dict(claims)
        claims = super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        with self._verified_lock:
            if len(self._verified) >= CACHE_SIZE:
                self._verified.clear()  # simple and bounded; a miss costs one verification
            self._verified[key] = dict(claims)
        return claims

    @staticmethod
    def _still_valid(claims: dict, allow_expired: bool) -> bool:
        now, leeway = time.time(), config.leeway
        leeway = leeway.total_seconds() if hasattr(leeway, "total_seconds") else leeway
        if "nbf" in claims and now < claims["nbf"] - leeway:
            return False
        return allow_expired or "exp" not in claims or now < claims["exp"] + leeway
