"""Two "hosts": two gunicorn masters (3 workers each) on different ports, sharing one
PostgreSQL database, one FILES_ROOT and the signing keys, each with its own ILGUN_DATA. Jobs
submitted to either run on both, survive a whole host being killed, and rate limits kept in
Redis count across both.

Which worker ran a job is not kept by the service (a finish clears lease_owner), so every test
database gets an audit trigger on the jobs table (pg_support.JOB_AUDIT_DDL): one row per
execution start and end, written in the same transaction as the change.
"""
from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter, defaultdict

import pytest

import pg_support
from gunicorn_harness import TERMINAL, dump, log, request, run_threads, wait_for

LEASE = 3.0
SWEEP = 0.5
MONITOR = 0.5          # service/engine/monitor.py MONITOR_INTERVAL: how often the sweep is looked at
NOOP = {"duration": 0, "steps": 1}


@pytest.fixture
def two_hosts(pg_database, ilgun_factory, tmp_path):
    """``start(settings=None)`` → (host A, host B), both running on ``pg_database``.

    Host A migrates the database and creates the admin; host B runs the same prepare step on
    the already migrated database (it must succeed and change nothing). The audit trigger is
    installed between the two, before any job exists."""
    def start(settings: dict | None = None):
        shared = {
            "DATABASE_URL": pg_database,
            "FILES_ROOT": str(tmp_path / "shared-files"),
            # Both hosts sign and verify with the same keys: a token from one works on the other.
            "SECRET_KEY": "two-hosts-secret-" + uuid.uuid4().hex,
            "JWT_SECRET_KEY": "two-hosts-jwt-" + uuid.uuid4().hex,
            "LEASE_SECONDS": str(LEASE),
            "SWEEP_INTERVAL": str(SWEEP),
            # No recycling mid-test: worker pids map executions to hosts.
            "MAX_REQUESTS": "0",
            **(settings or {}),
        }
        host_a = ilgun_factory(shared, name="hostA")
        pg_support.install_job_audit(pg_database)
        host_b = ilgun_factory(shared, name="hostB")
        assert host_a.database_url == host_b.database_url and host_a.data_dir != host_b.data_dir
        admins = host_a._select("SELECT username, role FROM users")
        assert admins == [{"username": "admin", "role": "admin"}], admins
        version = host_a._select("SELECT version_num FROM alembic_version")
        assert len(version) == 1, version
        return host_a, host_b
    return start


def _pid(worker_id: str) -> int:
    return int(worker_id.split(":")[-2])   # Dispatcher.worker_id = host:pid:hex


def _executions(server) -> dict[str, list[dict]]:
    """Per job, its executions in start order: {"start": row, "end": row or None}."""
    rows = server._select("SELECT * FROM it_job_events ORDER BY seq")
    by_token: dict[str, dict] = {}
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["event"] == "start":
            ex = {"start": r, "end": None}
            by_token[r["run_token"]] = ex
            out[r["job_id"]].append(ex)
        else:
            ex = by_token.get(r["run_token"])
            assert ex is not None and ex["end"] is None, f"an end without its start: {dump(r)}"
            ex["end"] = r
    return out


def _wait_all_terminal(server, ids: set[str], timeout: float) -> dict[str, dict]:
    def done():
        rows = server.db_jobs()
        states = Counter(rows[j]["status"] if j in rows else "missing" for j in ids)
        return rows if sum(states[s] for s in TERMINAL) == len(ids) else None
    try:
        return wait_for(done, timeout, interval=0.25, what=f"{len(ids)} jobs to finish")
    except AssertionError:
        rows = server.db_jobs()
        raise AssertionError(f"not all finished after {timeout}s: "
                             f"{Counter(rows[j]['status'] if j in rows else 'missing' for j in ids)}") from None


def test_500_jobs_submitted_to_both_hosts_run_once_each_on_both(two_hosts):
    host_a, host_b = two_hosts()
    token = host_a.register("twohosts")
    # The token host A issued is accepted by host B (shared JWT_SECRET_KEY, shared users table).
    assert host_b.call("GET", "/api/v1/jobs", token=token).status == 200
    pids = {"A": host_a.worker_pids(), "B": host_b.worker_pids()}
    assert len(pids["A"]) == len(pids["B"]) == 3 and not pids["A"] & pids["B"], pids
    ports = {"A": host_a.port, "B": host_b.port}

    n, clients = 500, 8
    submitted: list[tuple[str, str]] = []      # (host, job id)
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def client():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            host = "A" if i % 2 == 0 else "B"
            try:
                r = request(ports[host], "POST", "/api/v1/jobs", {"kind": "sleep", "params": NOOP}, token,
                            headers={"Idempotency-Key": uuid.uuid4().hex})
                assert r.status in (200, 202), r
                with lock:
                    submitted.append((host, r.data["id"]))
            except BaseException as exc:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(f"{host}: {exc!r}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    submit_s = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), "submitting did not finish in 90s"
    assert not errors, errors[:10]
    ids = [j for _, j in submitted]
    assert len(ids) == n and len(set(ids)) == n, "every submission got its own job"
    assert Counter(h for h, _ in submitted) == {"A": n // 2, "B": n // 2}

    rows = _wait_all_terminal(host_a, set(ids), timeout=60)
    log(f"{n} jobs submitted in {submit_s:.1f}s, all finished {time.monotonic() - t0:.1f}s after the first submit")
    ours = {j: rows[j] for j in ids}
    assert len(rows) == n, f"{len(rows)} job rows for {n} submissions"
    not_ok = {j: r for j, r in ours.items() if r["status"] != "succeeded"}
    assert not not_ok, dump(list(not_ok.values())[:5])
    retried = {j: r["attempt"] for j, r in ours.items() if r["attempt"] != 1}
    assert not retried, f"jobs that needed more than one attempt: {retried}"
    assert all(r["result"]["attempt"] == 1 and r["result"]["began_at"] for r in ours.values())

    # Exactly one execution per job, recorded start to finish by the trigger, by a worker of A or B.
    executions = _executions(host_a)
    assert set(executions) == set(ids)
    several = {j: len(ex) for j, ex in executions.items() if len(ex) != 1}
    assert not several, f"jobs started more than once: {several}"
    host_of = {pid: h for h, ps in pids.items() for pid in ps}
    ran_on: Counter = Counter()
    for job_id, (ex,) in executions.items():
        assert ex["end"] is not None and ex["end"]["status"] == "succeeded", dump(ex)
        pid = _pid(ex["start"]["worker"])
        assert pid in host_of, f"job {job_id} ran on {ex['start']['worker']}, a worker of neither host"
        ran_on[host_of[pid]] += 1
    by_worker = Counter(_pid(ex[0]["start"]["worker"]) for ex in executions.values())
    submitted_to = {j: h for h, j in submitted}
    claimed = [j for j, (ex,) in executions.items() if ex["start"]["op"] == "UPDATE"]
    elsewhere = [j for j in claimed if host_of[_pid(executions[j][0]["start"]["worker"])] != submitted_to[j]]
    log(f"executions per host {dict(ran_on)}, per worker pid {dict(by_worker)}; "
        f"{n - len(claimed)} started by their submit, {len(claimed)} claimed from the queue "
        f"({len(elsewhere)} by the host they were not submitted to)")
    assert ran_on["A"] + ran_on["B"] == n
    assert ran_on["A"] >= n // 10 and ran_on["B"] >= n // 10, f"one host barely ran anything: {dict(ran_on)}"

    # Nothing was recovered, nothing restarted, nothing crashed.
    assert {"A": host_a.worker_pids(), "B": host_b.worker_pids()} == pids
    for server in (host_a, host_b):
        text = server.log_text()
        assert "recovered" not in text, server.log_tail()
        markers = (" ERROR ", "[ERROR]", "[CRITICAL]", "Traceback", '"level": "ERROR"', '"level": "CRITICAL"')
        assert not any(m in text for m in markers), server.log_tail()


def test_kill_9_of_a_whole_host_its_jobs_finish_on_the_other(two_hosts):
    host_a, host_b = two_hosts()
    token = host_a.register("survivor")
    pids_a, pids_b = host_a.worker_pids(), host_b.worker_pids()
    params = {"duration": 2, "steps": 4, "write_file": True}

    ids: list[str] = []
    for i in range(40):
        server = host_a if i % 2 == 0 else host_b
        ids.append(server.submit(token, "sleep", params))
    assert len(set(ids)) == 40

    # Kill B while it runs jobs, after it has finished at least one (whose file host A serves below).
    def b_busy():
        ex = _executions(host_a)
        b_runs = [e for es in ex.values() for e in es if _pid(e["start"]["worker"]) in pids_b]
        running = [e for e in b_runs if e["end"] is None]
        finished = [e for e in b_runs if e["end"] is not None and e["end"]["status"] == "succeeded"]
        return len(running) >= 2 and finished
    wait_for(b_busy, timeout=30, interval=0.1, what="host B running jobs after finishing one")
    killed_at = time.time()
    host_b.kill_group()
    dead_at = time.time()
    assert not host_b.running()
    log(f"host B (master {host_b.pid}, workers {sorted(pids_b)}) killed in {dead_at - killed_at:.2f}s")

    # Every job ends succeeded on A: at most a lease plus a sweep after the kill, B's jobs are
    # requeued; A's 6 slots then run what is left (40 jobs x 2 s in all).
    rows = _wait_all_terminal(host_a, set(ids), timeout=LEASE + 60)
    finished_at = time.time()
    log(f"all 40 jobs finished {finished_at - dead_at:.1f}s after the kill")
    assert len(rows) == 40 and set(rows) == set(ids), "a job was lost or appeared from nowhere"
    not_ok = {j: r for j, r in rows.items() if r["status"] != "succeeded"}
    assert not not_ok, dump(list(not_ok.values()))

    executions = _executions(host_a)
    assert set(executions) == set(ids)
    in_flight_on_b = set()
    for job_id, exs in executions.items():
        final = rows[job_id]
        # Executions of one job never overlap: each starts after the previous one ended.
        for prev, nxt in zip(exs, exs[1:]):
            assert prev["end"] is not None and prev["end"]["at"] <= nxt["start"]["at"], dump(exs)
        last = exs[-1]
        assert last["end"] is not None and last["end"]["status"] == "succeeded", dump(exs)
        assert len(exs) == final["attempt"] == final["result"]["attempt"], dump({"final": final, "executions": exs})
        for ex in exs[:-1]:
            # An interrupted execution: one of B's, cut off by the kill and requeued by A's sweep.
            assert _pid(ex["start"]["worker"]) in pids_b, dump(exs)
            assert ex["end"]["status"] == "queued" and ex["end"]["message"].startswith("requeued: worker"), dump(exs)
            assert killed_at <= ex["end"]["at"] <= dead_at + LEASE + SWEEP + MONITOR + 4.0, (
                f"requeued {ex['end']['at'] - killed_at:.2f}s after the kill: {dump(exs)}")
            in_flight_on_b.add(job_id)
        if job_id in in_flight_on_b:
            # The recovery ran on A, and only after B was dead: never two live executions.
            assert _pid(last["start"]["worker"]) in pids_a, dump(exs)
            assert last["start"]["at"] >= killed_at and final["result"]["began_at"] >= killed_at, dump(exs)
        for ex in exs:
            worker_pid = _pid(ex["start"]["worker"])
            assert worker_pid in pids_a | pids_b, dump(exs)
            if ex["start"]["at"] > killed_at:
                assert worker_pid in pids_a, f"a start on B after the kill: {dump(exs)}"

    attempts = Counter(r["attempt"] for r in rows.values())
    log(f"attempts {dict(attempts)}; {len(in_flight_on_b)} job(s) were running on B when it died")
    assert in_flight_on_b, "no job was running on host B when it was killed: the test proves nothing"
    assert {j for j, r in rows.items() if r["attempt"] == 2} == in_flight_on_b
    assert all(r["attempt"] == 1 for j, r in rows.items() if j not in in_flight_on_b)
    # A's log names exactly those jobs as recovered.
    recovered = set()
    for line in host_a.log_text().splitlines():
        if "recovered" in line and "from dead workers" in line:
            recovered |= set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", line))
    assert recovered == in_flight_on_b, (recovered, in_flight_on_b)

    # The shared files root holds each job's file from its last attempt (a recovery on A
    # replaced what B's cut-off attempt had written), and A serves files that B wrote.
    owner = next(iter(rows.values()))["owner_id"]
    for job_id, r in rows.items():
        path = host_a.files_root / "users" / str(owner) / "jobs" / job_id / "out" / "sleep.txt"
        assert path.read_text() == f"job {job_id} attempt {r['attempt']}\n", job_id
        assert [f["name"] for f in host_a.job(job_id, token)["files"]] == ["sleep.txt"]
    done_on_b = [j for j, exs in executions.items() if _pid(exs[-1]["start"]["worker"]) in pids_b]
    assert done_on_b, "host B finished no job before it died"
    resp = host_a.call("GET", f"/api/v1/jobs/{done_on_b[0]}/files/sleep.txt", token=token)
    assert resp.status == 200 and resp.body == f"job {done_on_b[0]} attempt 1\n", resp

    # B's dispatchers stop counting as live workers (pruned after two leases without heartbeat).
    wait_for(lambda: not {w["pid"] for w in host_a.db_workers()} & pids_b, timeout=2 * LEASE + 10,
             what="host B's workers to be pruned from the workers table")
    assert host_a.live_workers_ok(3)


def test_rate_limit_in_redis_is_exact_across_both_hosts(redis_db12, two_hosts):
    limit = 30
    host_a, host_b = two_hosts({"RATELIMIT_ENABLED": "1", "RATELIMIT_STORAGE_URI": redis_db12,
                                "RATELIMIT_DEFAULT": f"{limit} per minute"})
    token = host_a.register("ratelimited2h")
    ports = {"A": host_a.port, "B": host_b.port}
    results: list[tuple[str, int, object, dict]] = []
    errors: list[str] = []
    lock = threading.Lock()
    clients, per_client = 6, 10
    barrier = threading.Barrier(clients)

    def client(c):
        try:
            barrier.wait(timeout=20)
            for k in range(per_client):
                host = "A" if (c + k) % 2 == 0 else "B"
                # A fresh connection per request (so requests spread over each host's workers), and
                # no retry: a retried request would be counted twice.
                r = request(ports[host], "GET", "/api/v1/jobs", token=token, retries=0)
                with lock:
                    results.append((host, r.status, r.body, r.headers))
        except BaseException as exc:  # noqa: BLE001
            with lock:
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    elapsed = run_threads(threads, timeout=45)
    assert not errors, errors
    assert len(results) == clients * per_client
    assert elapsed < 45, "all requests must fall in one 60 s window"

    statuses = Counter(status for _, status, *_ in results)
    per_host = Counter((host, status) for host, status, *_ in results)
    log(f"statuses {dict(statuses)}, per host {dict(per_host)}")
    assert Counter(h for h, *_ in results) == {"A": 30, "B": 30}
    assert statuses == Counter({200: limit, 429: clients * per_client - limit}), statuses
    for host, status, body, headers in results:
        if status == 429:
            assert body["error_code"] == "RATE_LIMITED", body
            retry_after = {k.lower(): v for k, v in headers.items()}.get("retry-after")
            assert retry_after is not None and int(retry_after) > 0, headers
        else:
            assert body["success"] is True, body
    # The counters live in Redis db 12, not in the database's own rate_limits table.
    import redis
    client_r = redis.Redis.from_url(redis_db12)
    try:
        keys = [k.decode() for k in client_r.keys("*")]
    finally:
        client_r.close()
    assert any("ilgun" in k for k in keys), keys
    assert host_a._select("SELECT count(*) AS n FROM rate_limits") == [{"n": 0}]
