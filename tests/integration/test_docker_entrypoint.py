"""The container's entrypoint script, run here as the image would run it (no Docker engine on
these machines): it migrates a fresh data folder, creates the admin, serves with gunicorn, passes
the Dockerfile's HEALTHCHECK, stops cleanly on SIGTERM, and runs a given command instead."""
from __future__ import annotations

import os
import re
import signal
import subprocess

from gunicorn_harness import ROOT, VENV_BIN, free_port, request, wait_for


def _env(data_dir, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ILGUN", "DATABASE", "PROMETHEUS"))}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", ILGUN_DATA=str(data_dir), HOST="127.0.0.1",
               PORT=str(port), ILGUN_ADMIN_PASSWORD="entrypoint-admin-pw", ILGUN_PROFILE="small",
               GUNICORN_CMD_ARGS="--no-control-socket", PYTHONUNBUFFERED="1")
    return env


def _healthcheck_command() -> str:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    line = next(l for l in text.splitlines() if l.startswith("HEALTHCHECK"))
    return line.split(" CMD ", 1)[1]


def test_entrypoint_migrates_serves_passes_the_healthcheck_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = _env(tmp_path / "data", port)
    log = open(tmp_path / "entrypoint.log", "wb")
    proc = subprocess.Popen(["scripts/docker-entrypoint.sh"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is None and request(port, "GET", "/healthz", timeout=2, retries=0).status == 200,
                 60, interval=0.2, what="the entrypoint's gunicorn")
        health = subprocess.run(["sh", "-c", _healthcheck_command()], env=env, timeout=10)
        assert health.returncode == 0
        login = request(port, "POST", "/api/v1/auth/login",
                        {"username": "admin", "password": "entrypoint-admin-pw"}, timeout=5)
        assert login.status == 200  # the admin it created
        assert (tmp_path / "data" / "ilgun.db").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    out = (tmp_path / "entrypoint.log").read_text()
    assert "workers" in out.lower()  # the profile it chose was printed


def test_entrypoint_runs_a_given_command_instead_of_serving(tmp_path):
    env = _env(tmp_path / "data", free_port())

    def run(*args):
        return subprocess.run(["scripts/docker-entrypoint.sh", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)

    res = run("python", "-c", "print('ran instead')")
    assert res.returncode == 0 and res.stdout.strip() == "ran instead"
    assert not (tmp_path / "data" / "ilgun.db").exists()  # nothing migrated or served for a one-off command
    assert run("flask", "--app", "service", "db", "upgrade").returncode == 0
    res = run("scripts/cleanup", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "dry run" in (res.stdout + res.stderr).lower()
