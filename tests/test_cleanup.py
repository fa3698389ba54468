"""scripts/cleanup against a seeded database and workspace: exactly what goes and what stays.
Every test runs on SQLite and on PostgreSQL."""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from filelock import FileLock

from service.store.schema import jobs, rate_limits, token_blocklist, uploads

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400


@pytest.fixture
def app_factory(postgresql_or_none, app_factory):
    """conftest's factory, on this test's database (torn down after the apps)."""
    if postgresql_or_none is None:
        return app_factory
    return lambda **overrides: app_factory(**{"DATABASE_URL": postgresql_or_none, **overrides})


def _age(path: Path, seconds: float) -> None:
    """Make a path and everything under it look ``seconds`` old."""
    then = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (then, then))


@pytest.fixture
def seeded(app, alice):
    svc = app.extensions["ilgun"]
    ws, now = svc.workspace, time.time()
    owner = alice.get("/api/v1/auth/me").get_json()["data"]["id"]
    made = {}

    def job(name, status, finished_days_ago=None, out=False, partial=False):
        job_id = str(uuid.uuid4())
        finished = now - finished_days_ago * DAY if finished_days_ago is not None else None
        with svc.engine.begin() as conn:
            conn.execute(jobs.insert().values(
                id=job_id, owner_id=owner, kind="sleep", params={}, status=status, attempt=1, max_attempts=3,
                run_after=now - 60 * DAY, created_at=now - 60 * DAY, updated_at=now, finished_at=finished,
                run_token="t" if status == "running" else None, lease_owner="w" if status == "running" else None,
                lease_expires_at=now + 60 if status == "running" else None))
        if out:
            (ws.output_dir(owner, job_id)).mkdir(parents=True)
            (ws.output_dir(owner, job_id) / "result.txt").write_bytes(b"x" * 1000)
        if partial:
            ws.tmp_dir(owner, job_id).mkdir(parents=True)
            (ws.tmp_dir(owner, job_id) / ".result.txt.part").write_bytes(b"p" * 500)
        if out or partial:
            _age(ws.job_dir(owner, job_id), 2 * 3600)
        made[name] = job_id
        return job_id

    job("old_succeeded", "succeeded", 8, out=True)
    job("new_succeeded", "succeeded", 1, out=True, partial=True)     # keeps out/, loses stale tmp/
    job("old_failed_in_ttl", "failed", 8)
    job("very_old_failed", "failed", 31, out=True)
    job("old_cancelled", "cancelled", 8)
    job("old_queued", "queued")
    job("old_running", "running", partial=True)                     # running: never touched
    orphan_old = ws.job_dir(owner, str(uuid.uuid4()))
    (orphan_old / "out").mkdir(parents=True)
    (orphan_old / "out" / "lost.bin").write_bytes(b"o" * 2000)
    _age(orphan_old, 2 * 3600)
    orphan_new = ws.job_dir(owner, str(uuid.uuid4()))
    (orphan_new / "tmp").mkdir(parents=True)                          # an execution just began here
    locks = ws.root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    for name in ("old_failed_in_ttl", "old_running"):
        (locks / f"{made[name]}.lock").touch()
        _age(locks / f"{made[name]}.lock", 2 * 3600)
    held_id = str(uuid.uuid4())
    (locks / f"{held_id}.lock").touch()
    _age(locks / f"{held_id}.lock", 2 * 3600)
    with svc.engine.begin() as conn:
        conn.execute(token_blocklist.insert(), [
            dict(jti="expired", token_type="access", user_id=owner, revoked_at=now - DAY, expires_at=now - 60),
            dict(jti="live", token_type="access", user_id=owner, revoked_at=now, expires_at=now + 600)])
        conn.execute(rate_limits.insert(), [dict(key="old", count=3, expires_at=now - 1),
                                            dict(key="live", count=3, expires_at=now + 60)])
    return dict(app=app, ws=ws, owner=owner, jobs=made, orphan_old=orphan_old, orphan_new=orphan_new,
                locks=locks, held_id=held_id)


def _cleanup(app, *args, **env):
    full_env = {**os.environ, "ILGUN_DATA": app.config["ILGUN_DATA"], "DATABASE_URL": app.config["DATABASE_URL"],
                "SECRET_KEY": app.config["SECRET_KEY"], "JWT_SECRET_KEY": app.config["JWT_SECRET_KEY"],
                "USER_DISK_QUOTA_BYTES": "1200", **env}
    return subprocess.run([str(ROOT / "scripts" / "cleanup"), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


def _state(s):
    engine = s["app"].extensions["ilgun"].engine
    with engine.connect() as conn:
        ids = set(conn.execute(sa.select(jobs.c.id)).scalars())
        tokens = set(conn.execute(sa.select(token_blocklist.c.jti)).scalars())
        counters = set(conn.execute(sa.select(rate_limits.c.key)).scalars())
    kept = {name for name, job_id in s["jobs"].items() if job_id in ids}
    return kept, tokens, counters


def test_dry_run_lists_with_sizes_and_changes_nothing(seeded):
    before = _state(seeded)
    files_before = sorted(str(p) for p in seeded["ws"].root.rglob("*"))
    run = _cleanup(seeded["app"], "--dry-run")
    assert run.returncode == 0, run.stderr
    assert f"would delete job {seeded['jobs']['old_succeeded']} (succeeded" in run.stdout
    assert "(1000 B)" in run.stdout and "(2.0 KiB)" in run.stdout   # sizes
    assert "dry run" in run.stdout.splitlines()[-1]
    assert _state(seeded) == before
    assert sorted(str(p) for p in seeded["ws"].root.rglob("*")) == files_before


def test_cleanup_removes_exactly_what_expired(seeded):
    s, ws, owner, ids = seeded, seeded["ws"], seeded["owner"], seeded["jobs"]
    with FileLock(str(s["locks"] / f"{s['held_id']}.lock")):   # an execution holds this one
        run = _cleanup(s["app"])
    assert run.returncode == 0, run.stdout + run.stderr
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("cleanup: 3 expired job(s)") and "0 error(s)" in summary, summary
    assert "1 revoked token(s) and 1 rate-limit counter(s) expired" in summary
    assert "1 user(s) over quota" in summary

    kept, tokens, counters = _state(s)
    assert kept == {"new_succeeded", "old_failed_in_ttl", "old_queued", "old_running"}
    assert tokens == {"live"} and counters == {"live"}
    for gone in ("old_succeeded", "very_old_failed"):
        assert not ws.job_dir(owner, ids[gone]).exists()
    assert (ws.output_dir(owner, ids["new_succeeded"]) / "result.txt").is_file()
    assert not ws.tmp_dir(owner, ids["new_succeeded"]).exists()                  # stale partial file
    assert (ws.tmp_dir(owner, ids["old_running"]) / ".result.txt.part").is_file()  # running: untouched
    assert not s["orphan_old"].exists() and s["orphan_new"].exists()
    assert not (s["locks"] / f"{ids['old_failed_in_ttl']}.lock").exists()
    assert (s["locks"] / f"{ids['old_running']}.lock").exists()
    assert (s["locks"] / f"{s['held_id']}.lock").exists()

    again = _cleanup(s["app"])      # only the lock that was held last time is left to go
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1].startswith(
        "cleanup: 0 expired job(s), 0 expired upload(s), 1 stale path(s)")
    assert not (s["locks"] / f"{s['held_id']}.lock").exists()
    assert kept == _state(s)[0]


def test_a_second_cleanup_while_one_runs_does_nothing(seeded):
    with FileLock(str(Path(seeded["app"].config["ILGUN_DATA"]) / "cleanup.lock")):
        run = _cleanup(seeded["app"])
    assert run.returncode == 2 and "another cleanup is running" in run.stderr
    assert "old_succeeded" in _state(seeded)[0]


def test_errors_give_a_non_zero_exit_and_a_summary(seeded):
    run = _cleanup(seeded["app"], RESULT_TTL_DAYS='{"queued": 1}')   # never allowed: refused, reported
    assert run.returncode == 1
    assert "queued jobs are never expired" in run.stderr
    assert "1 error(s)" in run.stdout.strip().splitlines()[-1]
    assert "old_queued" in _state(seeded)[0]


def test_old_uploads_go_unless_a_waiting_job_reads_them(app, alice):
    import io

    from PIL import Image

    svc = app.extensions["ilgun"]
    ws, now = svc.workspace, time.time()
    owner = alice.get("/api/v1/auth/me").get_json()["data"]["id"]

    def upload(name):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "PNG")
        resp = alice.client.post("/api/v1/files", data={"file": (io.BytesIO(buf.getvalue()), name)},
                                 headers=alice.headers(), content_type="multipart/form-data")
        return resp.get_json()["data"]["id"]

    old, in_use, new = upload("old.png"), upload("in-use.png"), upload("new.png")
    with svc.engine.begin() as conn:
        conn.execute(uploads.update().where(uploads.c.id.in_([old, in_use])).values(created_at=now - 31 * DAY))
        conn.execute(jobs.insert().values(
            id=str(uuid.uuid4()), owner_id=owner, kind="sleep", params={"file_id": in_use}, status="queued",
            attempt=0, max_attempts=3, run_after=now, created_at=now, updated_at=now))
    incoming = ws.incoming_dir()
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / "upload-dead.part").write_bytes(b"x" * 300)    # a killed worker's half upload
    _age(incoming / "upload-dead.part", 2 * 3600)
    (incoming / "upload-live.part").write_bytes(b"x" * 300)    # being received right now
    stray = ws.upload_path(owner, str(uuid.uuid4()))           # a file whose record is gone
    stray.write_bytes(b"s" * 100)
    _age(stray, 2 * 3600)

    dry = _cleanup(app, "--dry-run")
    assert dry.returncode == 0 and f"would delete upload {old} (old.png, user {owner})" in dry.stdout
    assert ws.upload_path(owner, old).is_file()
    run = _cleanup(app)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 expired upload(s), 2 stale path(s)" in run.stdout.strip().splitlines()[-1]
    listed = {f["id"] for f in alice.get("/api/v1/files").get_json()["data"]["items"]}
    assert listed == {in_use, new}
    assert not ws.upload_path(owner, old).exists()
    assert ws.upload_path(owner, in_use).is_file() and ws.upload_path(owner, new).is_file()
    assert not (incoming / "upload-dead.part").exists() and (incoming / "upload-live.part").exists()
    assert not stray.exists()
