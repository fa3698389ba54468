"""GET /metrics: who may read it, what it counts, the gauges read from the database, and the
multiprocess bookkeeping gunicorn's master does (service/metrics.py, service/web/metrics.py)."""
from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import jwt as pyjwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import metrics as m
from tests.conftest import ROOT, assert_error, sign_up

METRICS_TOKEN = "a-long-random-metrics-token-for-tests"


def samples(resp) -> dict[tuple, float]:
    """{(sample name, frozenset of labels): value} of a /metrics answer."""
    assert resp.status_code == 200, resp.data[:300]
    out = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(scrape: dict, name: str, **labels) -> float | None:
    return scrape.get((name, frozenset(labels.items())))


def scrape_until(api, predicate, timeout: float = 10.0) -> dict:
    """Observers run right after the job's final write, so a job seen finished may not be
    counted yet for a moment."""
    deadline = time.monotonic() + timeout
    while True:
        scrape = samples(api.get("/metrics"))
        if predicate(scrape) or time.monotonic() > deadline:
            return scrape
        time.sleep(0.05)


# --- who may read it ------------------------------------------------------------------------

def test_metrics_need_a_token(client):
    assert_error(client.get("/metrics"), 401, "AUTH_REQUIRED")


def test_forged_token_is_refused(app, client, admin):
    claims = pyjwt.decode(admin.token, options={"verify_signature": False})
    forged = pyjwt.encode(claims, "not-the-secret-key-but-long-enough-for-hs256", algorithm="HS256")
    assert_error(client.get("/metrics", headers={"Authorization": f"Bearer {forged}"}), 401, "TOKEN_INVALID")
    assert_error(client.get("/metrics", headers={"Authorization": "Bearer garbage"}), 401, "TOKEN_INVALID")


def test_a_user_is_forbidden(alice):
    assert_error(alice.get("/metrics"), 403, "FORBIDDEN")


def test_an_admin_reads_them(admin):
    resp = admin.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    scrape = samples(resp)
    assert value(scrape, "ilgun_database_up") == 1


def test_metrics_token(app_factory):
    app = app_factory(METRICS_TOKEN=METRICS_TOKEN)
    client = app.test_client()
    resp = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert resp.status_code == 200 and b"ilgun_database_up 1.0" in resp.data
    assert_error(client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}x"}), 401, "TOKEN_INVALID")
    assert_error(client.get("/metrics", headers={"Authorization": METRICS_TOKEN}), 401,
                 {"AUTH_REQUIRED", "TOKEN_INVALID"})  # not as a bearer token
    # admins' tokens still work next to it; a user's still do not
    assert sign_up(app, client, "admin", role="admin").get("/metrics").status_code == 200
    assert_error(sign_up(app, client, "alice").get("/metrics"), 403, "FORBIDDEN")


def test_metrics_disabled(app_factory):
    app = app_factory(METRICS_ENABLED=False)
    client = app.test_client()
    admin = sign_up(app, client, "admin", role="admin")
    assert_error(admin.get("/metrics"), 404, "NOT_FOUND")
    assert app.extensions["ilgun"].observers == []
    assert "ilgun_metrics" not in app.extensions
    assert admin.get("/api/v1/jobs").status_code == 200


def test_scrapes_are_not_rate_limited(app_factory):
    app = app_factory(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="2 per minute")
    admin = sign_up(app, app.test_client(), "admin", role="admin")
    assert [admin.get("/metrics").status_code for _ in range(5)] == [200] * 5


# --- requests ---------------------------------------------------------------------------------

def test_requests_are_counted_by_route_never_by_raw_path(app, admin, alice):
    ids = ["11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000"]
    for job_id in ids:
        assert_error(alice.get(f"/api/v1/jobs/{job_id}"), 404, "JOB_NOT_FOUND")
    for _ in range(3):
        assert alice.get("/api/v1/jobs").status_code == 200
    assert alice.post("/api/v1/jobs", {"kind": "nope"}).status_code == 404
    assert admin.get("/no/such/path/12345").status_code == 404
    assert admin.client.open("/api/v1/jobs", method="BREW").status_code == 405
    assert admin.client.put("/healthz").status_code == 405

    text = admin.get("/metrics").get_data(as_text=True)
    scrape = samples(admin.get("/metrics"))
    count = "ilgun_http_request_duration_seconds_count"
    assert value(scrape, count, endpoint="/api/v1/jobs/<job_id>", method="GET", status="404") == 2
    assert value(scrape, count, endpoint="/api/v1/jobs", method="GET", status="200") == 3
    assert value(scrape, count, endpoint="/api/v1/jobs", method="POST", status="404") == 1
    assert value(scrape, count, endpoint="unmatched", method="GET", status="404") == 1
    assert value(scrape, count, endpoint="unmatched", method="OTHER", status="405") == 1
    assert value(scrape, count, endpoint="unmatched", method="PUT", status="405") == 1
    assert value(scrape, count, endpoint="/api/v1/auth/login", method="POST", status="200") == 2
    assert value(scrape, count, endpoint="/metrics", method="GET", status="200") == 1  # the first scrape
    bucket = value(scrape, "ilgun_http_request_duration_seconds_bucket", endpoint="/api/v1/jobs",
                   method="GET", status="200", le="+Inf")
    assert bucket == 3
    assert value(scrape, "ilgun_http_request_duration_seconds_sum", endpoint="/api/v1/jobs",
                 method="GET", status="200") > 0
    for job_id in ids:
        assert job_id not in text
    assert "12345" not in text and "BREW" not in text
    endpoints = {dict(labels).get("endpoint") for name, labels in scrape if name.startswith("ilgun_http_")}
    assert all(e == "unmatched" or e.startswith("/") for e in endpoints), endpoints


# --- jobs ---------------------------------------------------------------------------------------

def test_queue_gauges_come_from_the_database(app, admin):
    """No dispatcher runs here, so submitted jobs stay queued."""
    assert app.extensions["ilgun"].dispatcher is None
    for _ in range(3):
        assert admin.submit("sleep", {"duration": 0}).status_code == 202
    time.sleep(0.05)
    scrape = samples(admin.get("/metrics"))
    assert value(scrape, "ilgun_jobs", kind="sleep", status="queued") == 3
    assert value(scrape, "ilgun_jobs", kind="sleep", status="running") == 0
    assert value(scrape, "ilgun_jobs", kind="download", status="queued") == 0  # every kind, zeros included
    assert value(scrape, "ilgun_queue_oldest_age_seconds", kind="sleep") >= 0.05
    assert value(scrape, "ilgun_queue_oldest_age_seconds", kind="download") == 0
    assert not [k for k in scrape if k[0] == "ilgun_workers"]  # no dispatcher, no live worker
    assert value(scrape, "ilgun_database_up") == 1


def test_queue_gauges_are_the_same_from_every_app_on_the_database(app_factory):
    """Two apps on one database stand for two workers: both report the same queue."""
    a, b = app_factory(), app_factory()
    admin_a = sign_up(a, a.test_client(), "admin", role="admin")
    admin_b = sign_up(b, b.test_client(), "admin", role="admin")
    admin_a.submit("sleep", {"duration": 0})
    admin_b.submit("sleep", {"duration": 0})
    for api in (admin_a, admin_b):
        assert value(samples(api.get("/metrics")), "ilgun_jobs", kind="sleep", status="queued") == 2


def test_database_failure_gives_database_up_zero(app, admin, monkeypatch):
    def broken():
        raise RuntimeError("database down")
    monkeypatch.setattr(app.extensions["ilgun_metrics"][1], "snapshot", broken)
    scrape = samples(admin.get("/metrics"))
    assert value(scrape, "ilgun_database_up") == 0
    assert not [k for k in scrape if k[0] == "ilgun_jobs"]


def test_finished_failed_and_retried_jobs(app, admin, dispatcher):
    svc = app.extensions["ilgun"]
    assert svc.observers and dispatcher.observers == tuple(svc.observers)
    ok = [admin.submit("sleep", {"duration": 0.01, "steps": 1}).get_json()["data"]["id"] for _ in range(2)]
    failed = admin.submit("sleep", {"duration": 0, "steps": 1, "fail": "permanent"}).get_json()["data"]["id"]
    crashed = admin.submit("sleep", {"duration": 0, "steps": 1, "fail": "crash"}).get_json()["data"]["id"]
    retried = admin.submit("sleep", {"duration": 0, "steps": 1, "fail": "transient",
                                     "succeed_on_attempt": 2}).get_json()["data"]["id"]
    for job_id in ok + [retried]:
        assert admin.wait(job_id)["status"] == "succeeded"
    assert admin.wait(failed)["error"]["code"] == "SLEEP_FAILED"
    assert admin.wait(crashed)["error"]["code"] == "INTERNAL_ERROR"

    scrape = scrape_until(admin, lambda s: value(s, "ilgun_jobs_finished_total", kind="sleep",
                                                 status="succeeded") == 3
                          and value(s, "ilgun_jobs_finished_total", kind="sleep", status="failed") == 2)
    assert value(scrape, "ilgun_jobs_finished_total", kind="sleep", status="succeeded") == 3
    assert value(scrape, "ilgun_jobs_finished_total", kind="sleep", status="failed") == 2
    assert value(scrape, "ilgun_job_failures_total", kind="sleep", error_code="SLEEP_FAILED") == 1
    assert value(scrape, "ilgun_job_failures_total", kind="sleep", error_code="INTERNAL_ERROR") == 1
    assert value(scrape, "ilgun_job_retries_total", kind="sleep", error_code="SLEEP_TRANSIENT") == 1
    assert value(scrape, "ilgun_job_duration_seconds_count", kind="sleep", status="succeeded") == 3
    assert value(scrape, "ilgun_job_duration_seconds_sum", kind="sleep", status="succeeded") >= 0.02
    # the two 10 ms jobs are above the 0.01 bucket
    assert value(scrape, "ilgun_job_duration_seconds_bucket", kind="sleep", status="succeeded", le="0.01") <= 1
    assert value(scrape, "ilgun_job_duration_seconds_bucket", kind="sleep", status="succeeded", le="3600.0") == 3
    # the dispatcher's worker is live, with its slots
    assert value(scrape, "ilgun_workers", host=socket.gethostname()) == 1
    assert value(scrape, "ilgun_worker_slots", host=socket.gethostname()) == 2
    assert value(scrape, "ilgun_jobs", kind="sleep", status="queued") == 0


def test_running_jobs_gauge_and_cancellation(app, admin, dispatcher):
    job_id = admin.submit("sleep", {"duration": 30, "steps": 300}).get_json()["data"]["id"]
    admin.wait(job_id, until=("running",))
    assert value(samples(admin.get("/metrics")), "ilgun_jobs", kind="sleep", status="running") == 1
    admin.post(f"/api/v1/jobs/{job_id}/cancel")
    assert admin.wait(job_id)["status"] == "cancelled"
    scrape = scrape_until(admin, lambda s: value(s, "ilgun_jobs_finished_total", kind="sleep", status="cancelled"))
    assert value(scrape, "ilgun_jobs_finished_total", kind="sleep", status="cancelled") == 1
    assert value(scrape, "ilgun_jobs", kind="sleep", status="running") == 0


def test_queued_cancels_and_abandoned_jobs_are_counted_without_a_duration(app, admin, dispatcher):
    import sqlalchemy as sa

    from service.store.schema import jobs
    dispatcher.stop(timeout=1)   # nothing runs: the next job stays queued
    app.extensions["ilgun"].dispatcher = None
    queued = admin.submit("sleep", {"duration": 0}).get_json()["data"]["id"]
    assert admin.post(f"/api/v1/jobs/{queued}/cancel").get_json()["data"]["status"] == "cancelled"
    lost = admin.submit("sleep", {"duration": 0}).get_json()["data"]["id"]
    with app.extensions["ilgun"].engine.begin() as conn:   # its worker died on its last attempt
        conn.execute(jobs.update().where(jobs.c.id == lost).values(
            status="running", attempt=3, max_attempts=3, run_token="t", lease_owner="dead",
            lease_expires_at=time.time() - 60))
    dispatcher._sweep()
    assert admin.get(f"/api/v1/jobs/{lost}").get_json()["data"]["error"]["code"] == "ABANDONED"
    scrape = samples(admin.get("/metrics"))
    assert value(scrape, "ilgun_jobs_finished_total", kind="sleep", status="cancelled") == 1
    assert value(scrape, "ilgun_jobs_finished_total", kind="sleep", status="failed") == 1
    assert value(scrape, "ilgun_job_failures_total", kind="sleep", error_code="ABANDONED") == 1
    assert not value(scrape, "ilgun_job_duration_seconds_count", kind="sleep", status="cancelled")


# --- rate limits ---------------------------------------------------------------------------------

def test_rate_limit_rejections_are_counted(app_factory):
    app = app_factory(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="2 per minute", RATELIMIT_LOGIN="3 per minute",
                      METRICS_TOKEN=METRICS_TOKEN)
    client = app.test_client()
    alice = sign_up(app, client, "alice")
    assert [alice.get("/api/v1/jobs").status_code for _ in range(4)] == [200, 200, 429, 429]
    # the default limit counts per route
    assert [alice.get(f"/api/v1/jobs/{n}").status_code for n in range(3)] == [404, 404, 429]
    for _ in range(3):  # one login above, the limit is 3: the last is refused
        client.post("/api/v1/auth/login", json={"username": "alice", "password": "wrong password"})
    resp = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    scrape = samples(resp)
    assert value(scrape, "ilgun_rate_limit_rejections_total", endpoint="/api/v1/jobs") == 2
    assert value(scrape, "ilgun_rate_limit_rejections_total", endpoint="/api/v1/jobs/<job_id>") == 1
    assert value(scrape, "ilgun_rate_limit_rejections_total", endpoint="/api/v1/auth/login") == 1
    assert value(scrape, "ilgun_http_request_duration_seconds_count", endpoint="/api/v1/jobs",
                 method="GET", status="429") == 2


# --- multiprocess bookkeeping ----------------------------------------------------------------------

def _write_process_files(path: Path, pid: int, requests: int) -> None:
    """What a worker in multiprocess mode leaves behind: a counter and a histogram file."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    counter = MmapedDict(str(path / f"counter_{pid}.db"))
    counter.write_value(mmap_key("ilgun_jobs_finished_total", "ilgun_jobs_finished_total",
                                 ["kind", "status"], ["sleep", "succeeded"], "help"), float(requests), 0.0)
    counter.close()
    histogram = MmapedDict(str(path / f"histogram_{pid}.db"))
    labels = ["endpoint", "method", "status"], ["/healthz", "GET", "200"]
    name = "ilgun_http_request_duration_seconds"
    histogram.write_value(mmap_key(name, name + "_sum", *labels, "help"), requests * 0.002, 0.0)
    histogram.write_value(mmap_key(name, name + "_bucket", labels[0] + ["le"], labels[1] + ["0.0025"], "help"),
                          float(requests), 0.0)
    histogram.close()


def _totals(path: Path) -> dict:
    from prometheus_client.multiprocess import MultiProcessCollector
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in MultiProcessCollector(None, path=str(path)).collect() for s in family.samples}


def test_an_exited_workers_counts_are_archived_not_lost(tmp_path):
    _write_process_files(tmp_path, 101, 5)
    _write_process_files(tmp_path, 102, 7)
    before = _totals(tmp_path)
    assert before[("ilgun_jobs_finished_total", frozenset({("kind", "sleep"), ("status", "succeeded")}))] == 12
    assert m.worker_exited(101, str(tmp_path)) == 3
    assert _totals(tmp_path) == before
    assert m.worker_exited(102, str(tmp_path)) == 3
    assert m.worker_exited(102, str(tmp_path)) == 0  # twice is harmless
    assert _totals(tmp_path) == before
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]
    _write_process_files(tmp_path, 103, 1)  # a new worker adds to the archived counts
    after = _totals(tmp_path)
    assert after[("ilgun_jobs_finished_total", frozenset({("kind", "sleep"), ("status", "succeeded")}))] == 13
    count = ("ilgun_http_request_duration_seconds_count",
             frozenset({("endpoint", "/healthz"), ("method", "GET"), ("status", "200")}))
    assert after[count] == 13


def test_archiving_waits_for_a_scrape_then_gives_up(tmp_path):
    _write_process_files(tmp_path, 101, 5)
    with m._dir_lock(str(tmp_path), exclusive=False, timeout=None):  # a scrape reading the files
        started = time.monotonic()
        with pytest.raises(OSError):
            m.worker_exited(101, str(tmp_path))
        assert 1.5 < time.monotonic() - started < 5
    assert (tmp_path / "counter_101.db").exists()  # still counted from its own file
    assert m.worker_exited(101, str(tmp_path)) == 3


def test_multiprocess_mode_sums_processes(tmp_path):
    """A real multiprocess scrape, in a child process (the mode is chosen at import)."""
    code = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
os.environ["PROMETHEUS_MULTIPROC_DIR"] = {str(tmp_path)!r}
from service import metrics as m
assert m.MULTIPROCESS and m.multiprocess_dir() == {str(tmp_path)!r}
mine = m.metrics_for_app()
assert m.metrics_for_app() is mine and mine.registry is None
for _ in range(3):
    mine.observe_request("/healthz", "GET", "200", 0.001)
mine.job_finished("sleep", "failed", "SLEEP_FAILED", 0.5)
snapshot = lambda: {{"now": 10.0, "jobs": {{"sleep": {{"queued": 4, "running": 1, "oldest_queued_at": 7.5}}}},
                     "workers": [{{"host": "h", "pid": 1, "slots": 2}}, {{"host": "h", "pid": 2, "slots": 2}}]}}
sys.stdout.write(m.render(mine, m.DatabaseCollector(snapshot)).decode())
"""
    _write_process_files(tmp_path, 99999, 5)  # another worker's, already there
    m.worker_exited(99998, str(tmp_path))  # nothing to archive: harmless
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    scrape = {(s.name, frozenset(s.labels.items())): s.value
              for f in text_string_to_metric_families(out.stdout) for s in f.samples}
    labels = {"endpoint": "/healthz", "method": "GET", "status": "200"}
    assert value(scrape, "ilgun_http_request_duration_seconds_count", **labels) == 8
    assert value(scrape, "ilgun_job_failures_total", kind="sleep", error_code="SLEEP_FAILED") == 1
    assert value(scrape, "ilgun_jobs", kind="sleep", status="queued") == 4
    assert value(scrape, "ilgun_queue_oldest_age_seconds", kind="sleep") == 2.5
    assert value(scrape, "ilgun_workers", host="h") == 2 and value(scrape, "ilgun_worker_slots", host="h") == 4
    # the database gauges are collected by the scrape, never written to files
    assert not list(tmp_path.glob("gauge_*.db"))


# --- gunicorn.conf.py hooks ------------------------------------------------------------------------

@pytest.fixture
def conf(monkeypatch, tmp_path):
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "METRICS_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ILGUN_PROFILE", "small")
    monkeypatch.setenv("ILGUN_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name in ("MAX_WORKERS", "WEB_THREADS"):  # the file exports these
        monkeypatch.setenv(name, os.environ.get(name, "2"))
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


class _Log:
    def __init__(self):
        self.lines = []

    def info(self, msg, *args):
        self.lines.append(msg % args)

    def warning(self, msg, *args):
        self.lines.append("WARNING " + msg % args)

    def exception(self, msg, *args):
        self.lines.append("EXC " + msg % args)


def test_on_starting_prepares_a_fresh_directory(conf, tmp_path, monkeypatch):
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # loading the file alone sets nothing
    root = tmp_path / "prometheus"
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / f"{host}-{dead.pid}").mkdir(parents=True)  # a master that is gone
    (root / f"{host}-{dead.pid}" / "counter_1.db").write_bytes(b"")
    (root / f"{host}-{os.getppid()}").mkdir()  # a master still alive
    (root / f"{host}-{os.getpid()}").mkdir()  # an earlier master with our pid (a container's pid 1)
    (root / f"{host}-{os.getpid()}" / "counter_1.db").write_bytes(b"")
    (root / f"otherhost-{dead.pid}").mkdir()  # another host's: not ours to judge
    server = types.SimpleNamespace(log=_Log())
    conf["on_starting"](server)
    path = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert path == root / f"{host}-{os.getpid()}" and path.is_dir() and not list(path.iterdir())
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [f"{host}-{os.getpid()}", f"{host}-{os.getppid()}", f"otherhost-{dead.pid}"])
    # a HUP reload runs the hook again: same directory, nothing emptied
    (path / "counter_5.db").write_bytes(b"")
    conf["on_starting"](server)
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(path) and (path / "counter_5.db").exists()


def test_on_starting_respects_the_operator_and_the_switch(conf, tmp_path, monkeypatch):
    server = types.SimpleNamespace(log=_Log())
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "mine"))
    conf["on_starting"](server)
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "mine")
    assert not (tmp_path / "prometheus").exists()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setenv("METRICS_ENABLED", "0")
    conf["on_starting"](server)
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_on_starting_with_a_read_only_data_folder(conf, tmp_path, monkeypatch):
    (tmp_path / "prometheus").write_text("a file where the folder should be")
    server = types.SimpleNamespace(log=_Log())
    conf["on_starting"](server)
    path = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        assert path.is_dir() and path.name.startswith("ilgun-prometheus-")
        assert any(line.startswith("WARNING metrics: cannot use") for line in server.log.lines)
    finally:
        path.rmdir()


def test_child_exit_archives_the_workers_files(conf, tmp_path, monkeypatch):
    server = types.SimpleNamespace(log=_Log())
    conf["child_exit"](server, types.SimpleNamespace(pid=101))  # metrics off: nothing to do
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    _write_process_files(tmp_path, 101, 5)
    conf["child_exit"](server, types.SimpleNamespace(pid=101))
    assert not (tmp_path / "counter_101.db").exists() and (tmp_path / "counter_archive.db").exists()
    assert server.log.lines == []
