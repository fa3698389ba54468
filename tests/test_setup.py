"""Config loading, instance secrets, migrations and CLI commands."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from config import load_config
from service.secrets_file import ensure_secrets

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_env_and_dotenv_precedence(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("MAX_WORKERS=5\nLEASE_SECONDS=12.5\nALLOW_REGISTRATION=false\n")
    cfg = load_config(environ={"MAX_WORKERS": "7", "ILGUN_DATA": str(tmp_path),
                               "ILGUN_ALLOW_PRIVATE_URLS": "1", "KIND_LIMITS": '{"sleep": {"per_user": 2}}'},
                      env_file=env_file)
    assert cfg["MAX_WORKERS"] == 7            # environment beats .env
    assert cfg["LEASE_SECONDS"] == 12.5       # .env beats defaults
    assert cfg["ALLOW_REGISTRATION"] is False
    assert cfg["DOWNLOAD_ALLOW_PRIVATE_URLS"] is True
    assert cfg["KIND_LIMITS"] == {"sleep": {"per_user": 2}}
    assert cfg["DATABASE_URL"] == f"sqlite:///{tmp_path / 'ilgun.db'}"
    assert cfg["RATELIMIT_STORAGE_URI"] == "ilgun+" + cfg["DATABASE_URL"]


def test_bad_env_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="MAX_WORKERS"):
        load_config(environ={"MAX_WORKERS": "many", "ILGUN_DATA": str(tmp_path)}, env_file=None)


def test_secrets_generated_once_with_private_mode(tmp_path):
    first = ensure_secrets(tmp_path)
    second = ensure_secrets(tmp_path)
    assert first == second and len(first["JWT_SECRET_KEY"]) >= 32
    mode = stat.S_IMODE(os.stat(tmp_path / "secrets.json").st_mode)
    assert mode == 0o600


def test_apps_on_the_same_data_dir_share_the_generated_secret(app_factory):
    a, b = app_factory(), app_factory()
    assert a.config["JWT_SECRET_KEY"] == b.config["JWT_SECRET_KEY"]
    assert a.config["JWT_SECRET_KEY"]


def test_migrations_match_the_schema(app):
    """The Alembic history produces exactly the tables the code declares."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from service.store.schema import metadata
    with app.extensions["ilgun"].engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_create_admin_is_idempotent_and_generates_a_password(runner, app):
    first = runner.invoke(args=["create-admin"])
    assert first.exit_code == 0 and "generated password:" in first.output
    password = first.output.split("generated password:")[1].split()[0]
    again = runner.invoke(args=["create-admin"])
    assert again.exit_code == 0 and "generated" not in again.output
    resp = app.test_client().post("/api/v1/auth/login", json={"username": "admin", "password": password})
    assert resp.status_code == 200
    me = app.test_client().get("/api/v1/auth/me", headers={
        "Authorization": f"Bearer {resp.get_json()['data']['access_token']}"})
    assert me.get_json()["data"]["role"] == "admin"


def test_profile_command(runner):
    result = runner.invoke(args=["profile", "--json"])
    assert result.exit_code == 0
    profile = json.loads(result.output)
    assert {"workers", "threads", "max_workers", "reasons"} <= set(profile)


def test_flask_db_upgrade_from_scratch_on_the_command_line(tmp_path):
    env = {**os.environ, "ILGUN_DATA": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    flask = Path(sys.executable).parent / "flask"
    run = subprocess.run([str(flask), "--app", "service", "db", "upgrade"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    check = subprocess.run([str(flask), "--app", "service", "db", "check"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr + check.stdout
    assert (tmp_path / "ilgun.db").is_file()


@pytest.mark.real_password_hashing
def test_passwords_are_stored_with_scrypt(app):
    """The production hash, not the cheap one the other tests use."""
    import sqlalchemy as sa
    from service.store.schema import users
    svc = app.extensions["ilgun"]
    svc.users.create("carol", "a good long password")
    with svc.engine.connect() as conn:
        stored = conn.execute(sa.select(users.c.password_hash).where(users.c.username == "carol")).scalar_one()
    assert stored.startswith("scrypt:") and "a good long password" not in stored
    assert svc.users.authenticate("carol", "a good long password")["username"] == "carol"


def test_the_same_migrations_build_the_schema_on_postgresql(tmp_path):
    """`flask db upgrade` on an empty PostgreSQL schema gives exactly the declared tables."""
    from tests.pg import fresh_schema_url
    with fresh_schema_url("ilgun_migrate_test", create_tables=False) as url:
        env = {**os.environ, "ILGUN_DATA": str(tmp_path), "DATABASE_URL": url}
        flask = Path(sys.executable).parent / "flask"
        for args in (["db", "upgrade"], ["db", "check"]):
            run = subprocess.run([str(flask), "--app", "service", *args], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr + run.stdout
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        from service.store import database
        from service.store.schema import metadata
        engine = database.make_engine(url)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            assert conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar() == 0
        engine.dispose()
