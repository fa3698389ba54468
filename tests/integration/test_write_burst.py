"""A burst of 50 concurrent writers against one gunicorn (3 workers x 2 threads, a dispatcher
each): no "database is locked" (nor any other 5xx) reaches a client, and every job a 202 announced
exists exactly once.

Each round, 50 threads open their connection, wait at a barrier and then send one write each at
the same moment: 34 submit a job with their own Idempotency-Key, 6 submit in pairs sharing a key
(two racing submissions of one job: exactly one job, the other answer a replay), 4 cancel a
long-running job, 4 delete a finished one and 2 register a new user. The rate limiter stays on
with limits too high to refuse anything, so every request also writes its counter into the same
database (the service's default limiter storage), as in production. On SQLite, and the same
through PostgreSQL (skipped where none is reachable, required under CI=true).

Loopback only; every wait is bounded; the servers are killed at teardown (ilgun_factory).
"""
from __future__ import annotations

import http.client
import json
import os
import threading
import time
import uuid
from collections import Counter

from gunicorn_harness import TERMINAL, dump, log, wait_for

CLIENTS = 50
ROUNDS = int(os.environ.get("ILGUN_BURST_ROUNDS", "2"))  # make reliability: 6
USERS = 10
SUBMITS, PAIRS, CANCELS, DELETES, REGISTERS = 34, 3, 4, 4, 2
assert SUBMITS + 2 * PAIRS + CANCELS + DELETES + REGISTERS == CLIENTS

SETTINGS = {
    "RATELIMIT_ENABLED": "1",       # counters in the app's database: one more write per request
    "RATELIMIT_DEFAULT": "100000 per minute",
    "RATELIMIT_SUBMIT": "100000 per minute",
    "RATELIMIT_LOGIN": "100000 per minute",
    "MAX_REQUESTS": "0",            # no worker recycling in the middle of a burst
}
EXPECTED = {"submit": {202}, "pair": {200, 202}, "cancel": {200}, "delete": {200}, "register": {201}}


def _send(conn: http.client.HTTPConnection, method: str, path: str, body, token, headers=None):
    hdrs = {"Connection": "close"}
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    return resp.status, resp.read()


def _burst(server, tokens, round_no: int, to_cancel: list[str], to_delete: list[str]) -> list[dict]:
    """One round: every thread connects, waits at the barrier, sends its one write."""
    plan = []
    for i in range(SUBMITS):
        plan.append(("submit", i % USERS, uuid.uuid4().hex))
    for p in range(PAIRS):
        key = uuid.uuid4().hex
        plan += [("pair", p % USERS, key), ("pair", p % USERS, key)]
    plan += [("cancel", None, job_id) for job_id in to_cancel]
    plan += [("delete", None, job_id) for job_id in to_delete]
    plan += [("register", None, f"burst{round_no}x{i}") for i in range(REGISTERS)]
    assert len(plan) == CLIENTS
    results: list[dict] = [{} for _ in plan]
    barrier = threading.Barrier(CLIENTS)
    admin = server.admin_token

    def writer(n: int) -> None:
        role, user, arg = plan[n]
        out = results[n]
        out.update(role=role, user=user, arg=arg)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            conn.connect()
            barrier.wait(timeout=30)
            out["t0"] = time.monotonic()
            if role in ("submit", "pair"):
                request = ("POST", "/api/v1/jobs", {"kind": "sleep", "params": {"duration": 0.02, "steps": 1}},
                           tokens[user], {"Idempotency-Key": arg})
            elif role == "cancel":
                request = ("POST", f"/api/v1/jobs/{arg}/cancel", None, admin, None)
            elif role == "delete":
                request = ("DELETE", f"/api/v1/jobs/{arg}", None, admin, None)
            else:
                request = ("POST", "/api/v1/auth/register", {"username": arg, "password": "burst-password-1"},
                           None, None)
            out["status"], out["raw"] = _send(conn, *request)
            out["seconds"] = time.monotonic() - out["t0"]
        except Exception as exc:  # noqa: BLE001 - reported by the test
            out["exception"] = repr(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "writer threads still running after 90 s"
    return results


def _run(server) -> None:
    tokens = [server.register(f"writer{i}") for i in range(USERS)]
    server.admin_token  # noqa: B018 - log the admin in before the bursts
    all_results: list[dict] = []
    cancelled, deleted = [], []
    started = time.monotonic()
    for round_no in range(ROUNDS):
        # victims for this round: long sleeps to cancel, finished jobs to delete
        to_cancel = [server.submit(tokens[i], "sleep", {"duration": 60, "steps": 60}) for i in range(CANCELS)]
        to_delete = [server.submit(tokens[i], "sleep", {"duration": 0, "steps": 1}) for i in range(DELETES)]
        server.wait_jobs(to_delete, timeout=30)
        all_results += _burst(server, tokens, round_no, to_cancel, to_delete)
        cancelled += to_cancel
        deleted += to_delete
    burst_seconds = time.monotonic() - started

    statuses = Counter((r["role"], r.get("status", r.get("exception", "?"))) for r in all_results)
    slowest = max(r.get("seconds", 0) for r in all_results)
    log(f"{ROUNDS} bursts of {CLIENTS} writers in {burst_seconds:.1f}s (slowest answer {slowest:.2f}s): "
        f"{dict(sorted(statuses.items(), key=str))}")

    exceptions = [r for r in all_results if "exception" in r]
    assert not exceptions, f"{len(exceptions)} request(s) failed outright: {dump(exceptions[:5])}"
    server_errors = [r for r in all_results if r["status"] >= 500]
    assert not server_errors, f"{len(server_errors)} 5xx answer(s): {dump(server_errors[:5])}"
    locked = [r for r in all_results if b"database is locked" in r["raw"].lower()]
    assert not locked, f"'database is locked' reached {len(locked)} client(s): {dump(locked[:5])}"
    unexpected = [r for r in all_results if r["status"] not in EXPECTED[r["role"]]]
    assert not unexpected, f"{len(unexpected)} unexpected answer(s): {dump(unexpected[:5])}"

    # every job a 202 announced exists exactly once; each racing pair made one job
    rows = server.db_jobs()
    announced = [json.loads(r["raw"])["data"]["id"] for r in all_results if r["status"] == 202]
    assert len(announced) == len(set(announced)), "one job id announced by two 202s"
    missing = [j for j in announced if j not in rows]
    assert not missing, f"{len(missing)} announced job(s) not in the database: {missing[:5]}"
    by_key = Counter(r["idempotency_key"] for r in rows.values() if r["idempotency_key"])
    keys = {r["arg"] for r in all_results if r["role"] in ("submit", "pair")}
    assert {k: by_key[k] for k in keys if by_key[k] != 1} == {}, "an Idempotency-Key with other than one job"
    for key in {r["arg"] for r in all_results if r["role"] == "pair"}:
        pair = sorted(r["status"] for r in all_results if r["role"] == "pair" and r["arg"] == key)
        ids = {json.loads(r["raw"])["data"]["id"] for r in all_results if r["role"] == "pair" and r["arg"] == key}
        assert pair == [200, 202] and len(ids) == 1, f"racing pair {key}: {pair}, ids {ids}"
    assert len(announced) == ROUNDS * (SUBMITS + PAIRS)

    # the other writes took effect
    assert not [j for j in deleted if j in rows], "a deleted job is still in the database"
    wait_for(lambda: all(server.db_jobs()[j]["status"] in TERMINAL for j in cancelled), 30,
             interval=0.2, what="the cancelled jobs to stop")
    rows = server.db_jobs()
    assert {rows[j]["status"] for j in cancelled} == {"cancelled"}, {j: rows[j]["status"] for j in cancelled}
    users = {r["username"] for r in server._select("SELECT username FROM users")}
    assert {r["arg"] for r in all_results if r["role"] == "register"} <= users

    # and every burst job ran, once
    def finished():
        current = server.db_jobs()
        return all(current[j]["status"] in TERMINAL for j in announced) and current
    rows = wait_for(finished, 60, interval=0.3, what="every burst job to finish")
    bad = [rows[j] for j in announced if rows[j]["status"] != "succeeded" or rows[j]["attempt"] != 1]
    assert not bad, f"{len(bad)} burst job(s) not succeeded on their first attempt: {dump(bad[:3])}"

    text = server.log_text()
    lines = [ln for ln in text.splitlines() if "database is locked" in ln.lower()
             and "database busy, retrying write" not in ln]
    assert not lines, "'database is locked' in the server log outside the write retry:\n" + "\n".join(lines[:5])
    assert "Traceback (most recent call last)" not in text, server.log_tail(60)
    log(f"write retries logged by the service: {text.count('database busy, retrying write')}")


def test_write_burst_sqlite(ilgun_factory):
    _run(ilgun_factory(SETTINGS))


def test_write_burst_postgres(request):
    url = request.getfixturevalue("pg_database")      # before the servers: dropped after them
    factory = request.getfixturevalue("ilgun_factory")
    _run(factory({**SETTINGS, "DATABASE_URL": url}))
