"""GET /metrics in the Prometheus text format, and the WSGI wrapper that times every request.

The metrics themselves (names, the job observer, the database gauges, gunicorn's multiprocess
mode) are in service/metrics.py. Reading them takes ``Authorization: Bearer <token>`` with an
admin's access token or the METRICS_TOKEN setting (for Prometheus: access tokens expire).
METRICS_ENABLED=false leaves all of this out: no timing, and /metrics is a 404.
"""
from __future__ import annotations

import hmac
import logging
from time import perf_counter

from flask import Blueprint, Response, current_app, request
from flask_jwt_extended import current_user, verify_jwt_in_request

from service import metrics as m
from service.errors import Forbidden
from service.extensions import limiter

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

EXTENSION = "ilgun_metrics"  # app.extensions[EXTENSION] = (Metrics, DatabaseCollector)
ROUTE_KEY = "ilgun.route"  # environ key: the route that matched, for RequestTimer


def init_app(app) -> None:
    """Count this app's requests and its dispatcher's jobs, and serve /metrics. Call after
    app.extensions["ilgun"] exists and before a dispatcher starts (it takes the observers)."""
    if not app.config["METRICS_ENABLED"]:
        return
    metrics = m.metrics_for_app()
    svc = app.extensions["ilgun"]
    svc.observers.append(metrics)
    app.extensions[EXTENSION] = (metrics, m.DatabaseCollector(svc.metrics_snapshot))
    app.wsgi_app = RequestTimer(app.wsgi_app, metrics)
    app.teardown_request(_remember_route)
    app.register_blueprint(bp)


def _remember_route(_exc) -> None:
    """Leave the matched route where RequestTimer finds it: Flask drops the request object from
    the environ when the request context ends, before the WSGI call returns."""
    rule = request.url_rule
    if rule is not None:
        request.environ[ROUTE_KEY] = rule.rule


def app_metrics(app) -> m.Metrics | None:
    """This app's Metrics, or None when metrics are off."""
    pair = app.extensions.get(EXTENSION)
    return pair[0] if pair else None


class RequestTimer:
    """WSGI wrapper timing each request: one perf_counter pair and one histogram observation
    around the whole Flask call, so requests refused by a before_request hook (a rate limit)
    are timed too. The route comes from the environ (_remember_route); the status from
    start_response, which Werkzeug calls before returning the body."""

    def __init__(self, wsgi_app, metrics: m.Metrics):
        self.wsgi_app = wsgi_app
        self.metrics = metrics

    def __call__(self, environ, start_response):
        started = perf_counter()
        status = []

        def timed_start_response(status_line, headers, exc_info=None):
            status.append(status_line)
            return start_response(status_line, headers, exc_info)

        try:
            return self.wsgi_app(environ, timed_start_response)
        finally:
            elapsed = perf_counter() - started
            try:
                self.metrics.observe_request(environ.get(ROUTE_KEY, m.UNMATCHED),
                                             environ.get("REQUEST_METHOD", "GET"),
                                             status[-1][:3] if status else "500", elapsed)
            except Exception:  # noqa: BLE001 - a metric must never fail a request
                log.exception("metrics: recording a request failed")


def count_rate_limit_breach(_limit) -> None:
    """Flask-Limiter's on_breach callback (service/extensions.py): one call per refused request
    (it stops at the first breached limit). Returns None, so the usual 429 answer is sent."""
    metrics = app_metrics(current_app)
    if metrics is not None:
        metrics.rate_limited(m.endpoint_label(request))


def _authorize() -> None:
    """METRICS_TOKEN, else an admin's access token (401 / 403 answers as everywhere else)."""
    expected = current_app.config.get("METRICS_TOKEN") or ""
    if expected:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode()):
            return
    verify_jwt_in_request()
    if current_user["role"] != "admin":
        raise Forbidden("Only admins may read the metrics.")


@bp.get("/metrics")
@limiter.exempt
def scrape():
    _authorize()
    metrics, database = current_app.extensions[EXTENSION]
    return Response(m.render(metrics, database), status=200,
                    headers={"Content-Type": m.CONTENT_TYPE, "Cache-Control": "no-store"})
