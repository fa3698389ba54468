"""ilgun: a self-hosted, multi-user job service. ``create_app`` is the Flask app factory."""
from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

from flask import Flask

from config import load_config


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    settings = load_config(config)
    app = Flask(__name__, instance_path=settings["ILGUN_DATA"], instance_relative_config=False)
    # Werkzeug would answer "//" in a path with an HTML redirect; the API answers JSON.
    app.url_map.merge_slashes = False
    _apply_settings(app, settings)
    from service import log_context
    log_context.configure(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # import-time chatter

    from service import cli, pages
    from service.extensions import db, jwt, limiter, migrate
    from service.jobs_service import JobService
    from service.store.database import db_pool_size, make_engine
    from service.web import auth, cefr, errors, files, jobs, request_ids, security, system
    from service.web import openapi as openapi_docs
    from service.web import metrics as web_metrics
    from service.web.json_provider import OrjsonProvider
    from service.web.sessions import LazyCookieSessionInterface

    app.session_interface = LazyCookieSessionInterface()
    app.request_class = files.UploadRequest
    app.json = OrjsonProvider(app)

    db.init_app(app)
    migrate.init_app(app, db, directory=str(Path(__file__).parent / "migrations"), render_as_batch=True)
    request_ids.init_app(app)  # first: even a 429 from the default rate limit carries the request id
    jwt.init_app(app)
    limiter.init_app(app)
    security.init_app(app)
    errors.init_app(app)

    engine = make_engine(app.config["DATABASE_URL"], pool_size=db_pool_size(app.config))
    app.extensions["ilgun"] = JobService(app.config, engine)

    app.register_blueprint(auth.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(cefr.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(system.bp)
    app.register_blueprint(openapi_docs.bp)
    pages.init_app(app)  # the server-rendered pages (cookie sign-in, my jobs, admin)
    web_metrics.init_app(app)  # /metrics and the request timer, unless METRICS_ENABLED is off
    cli.init_app(app)

    if app.config["START_DISPATCHER"]:
        from service.runtime import start_worker_runtime
        start_worker_runtime(app, label="embedded")
    return app


def _apply_settings(app: Flask, settings: dict[str, Any]) -> None:
    from service.secrets_file import ensure_secrets

    if not settings["SECRET_KEY"] or not settings["JWT_SECRET_KEY"]:
        generated = ensure_secrets(settings["ILGUN_DATA"])
        settings["SECRET_KEY"] = settings["SECRET_KEY"] or generated["SECRET_KEY"]
        settings["JWT_SECRET_KEY"] = settings["JWT_SECRET_KEY"] or generated["JWT_SECRET_KEY"]
    app.config.update(settings)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=settings["DATABASE_URL"],
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(seconds=settings["JWT_ACCESS_TOKEN_EXPIRES"]),
        JWT_REFRESH_TOKEN_EXPIRES=timedelta(seconds=settings["JWT_REFRESH_TOKEN_EXPIRES"]),
        RATELIMIT_STRATEGY="fixed-window",
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_KEY_PREFIX="ilgun",
        JSON_SORT_KEYS=False,
    )
