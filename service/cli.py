"""Flask CLI commands: `flask --app service create-admin | profile | setup`."""
from __future__ import annotations

import json
import secrets

import click
from flask import current_app


def _ensure_admin(username: str, password: str | None) -> str | None:
    """Create the admin, or reset its password when one is given. Returns a generated password."""
    users = current_app.extensions["ilgun"].users
    generated = None
    if users.by_username(username) is None:
        if not password:
            password = generated = secrets.token_urlsafe(12)
        users.create(username, password, role="admin")
    elif password:
        users.set_password(username, password, role="admin")
    return generated


def init_app(app) -> None:
    @app.cli.command("create-admin")
    @click.option("--username", default=None, help="default: ILGUN_ADMIN_USERNAME")
    @click.option("--password", default=None, help="default: ILGUN_ADMIN_PASSWORD, else generated")
    def create_admin(username, password):
        """Create the admin account (idempotent)."""
        username = username or current_app.config["ILGUN_ADMIN_USERNAME"]
        password = password or current_app.config["ILGUN_ADMIN_PASSWORD"] or None
        generated = _ensure_admin(username, password)
        if generated:
            click.echo(f"Created admin {username!r} with generated password: {generated}")
            click.echo("(shown once; set ILGUN_ADMIN_PASSWORD to choose your own)")
        else:
            click.echo(f"Admin {username!r} is ready.")

    @app.cli.command("profile")
    @click.option("--json", "as_json", is_flag=True)
    def profile(as_json):
        """Print the gunicorn profile chosen for this host, and why."""
        import dataclasses

        from service.profile import choose_profile, format_profile
        p = choose_profile()
        click.echo(json.dumps(dataclasses.asdict(p), indent=2) if as_json else format_profile(p))
