"""Flask's signed-cookie sessions, opened only when the request carries a session cookie.

Why: Flask opens the session on every request, and SecureCookieSessionInterface builds an
itsdangerous serializer (key derivation included) before it even looks for the cookie. API
requests never send one; that construction was ~4 % of a worker's CPU in the engine benchmark.
"""
from __future__ import annotations

from flask.sessions import SecureCookieSessionInterface


class LazyCookieSessionInterface(SecureCookieSessionInterface):
    def open_session(self, app, request):
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)
