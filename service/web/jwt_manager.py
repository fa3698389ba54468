"""flask-jwt-extended's JWTManager with a cache of verified tokens.

Why: every authenticated request decoded its bearer token three times (claims unverified,
header unverified, then verified with the HMAC) — about a tenth of a gunicorn worker's CPU in
the engine benchmark, for a token a client typically sends hundreds of times. A token string
that was verified with the current key, audience and issuer is not verified again until it
expires: its expiry (and not-before) are re-checked on every hit against the same leeway, and a
different CSRF value or key is a miss. Revocation and the user lookup are not cached (they run
on every request, see security.py).
"""
from __future__ import annotations

import threading
import time

from flask_jwt_extended import JWTManager
from flask_jwt_extended.config import config

CACHE_SIZE = 4096


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
