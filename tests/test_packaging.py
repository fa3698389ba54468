"""The Dockerfile and docker-compose.yml, checked without a Docker engine (CI machines have none):
what they name exists and says what the README promises. tests/integration/test_docker_entrypoint.py
runs the image's entrypoint script itself."""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from config import defaults

ROOT = Path(__file__).resolve().parent.parent


def _dockerfile() -> list[str]:
    """Instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_the_dockerfile_is_multi_stage_slim_non_root_with_a_volume_and_a_healthcheck():
    lines = _dockerfile()
    froms = [l for l in lines if l.startswith("FROM ")]
    assert len(froms) == 2 and all("-slim" in l for l in froms)
    final = lines[lines.index(froms[1]):]
    user = [l for l in final if l.startswith("USER ")]
    assert user and user[-1].split()[1] not in ("root", "0")
    assert any(l.startswith("VOLUME") and "/data" in l for l in final)
    assert any(l.startswith("ENV") and "ILGUN_DATA=/data" in l for l in final)
    health = next(l for l in final if l.startswith("HEALTHCHECK"))
    assert "/healthz" in health
    entry = next(l for l in final if l.startswith("ENTRYPOINT"))
    script = ROOT / re.search(r'"([^"]+)"', entry).group(1)
    assert script.is_file() and os.access(script, os.X_OK)


def test_every_path_the_dockerfile_copies_exists_and_no_dev_files_go_in():
    for line in _dockerfile():
        if line.startswith("COPY") and "--from=" not in line:
            sources = [p for p in line.split()[1:-1] if not p.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"{line}: {src} missing"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "instance", ".git", "tests", ".env"} <= set(ignored)


def test_compose_runs_ilgun_on_postgresql_and_redis_with_known_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "redis", "ilgun"}
    ilgun = services["ilgun"]
    env = ilgun["environment"]
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://") and "@db:5432/" in env["DATABASE_URL"]
    assert env["RATELIMIT_STORAGE_URI"].startswith("redis://redis:6379/")
    known = {name for name in dir(defaults) if name.isupper()} | {"ILGUN_ADMIN_PASSWORD", "ILGUN_PROFILE"}
    assert set(env) <= known, set(env) - known
    for secret in ("SECRET_KEY", "JWT_SECRET_KEY", "ILGUN_ADMIN_PASSWORD"):
        assert ":?" in env[secret], f"{secret} must be required, never defaulted"
    assert ilgun["depends_on"] == {"db": {"condition": "service_healthy"},
                                   "redis": {"condition": "service_healthy"}}
    assert any(v.endswith(":/data") for v in ilgun["volumes"])
    assert all("healthcheck" in services[name] for name in ("db", "redis"))
    # the grace period outlasts gunicorn's, so running jobs finish or are handed back
    assert int(ilgun["stop_grace_period"].rstrip("s")) > 30
    example = dict(l.split("=", 1) for l in (ROOT / ".env.example").read_text().splitlines()
                   if l and not l.startswith("#"))
    assert all(value == "" for value in example.values()), "no default secrets in .env.example"
