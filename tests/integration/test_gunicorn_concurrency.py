"""Many clients, many jobs, three gunicorn workers sharing one SQLite file."""
from __future__ import annotations

import random
import threading
import time
import uuid

from gunicorn_harness import TERMINAL, dump, log

CLIENTS = 20
JOBS = 300
USERS = 4
RANK = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "cancelled": 2}


def test_300_jobs_from_20_clients_run_exactly_once(ilgun_factory):
    server = ilgun_factory()
    tokens = [server.register(f"load{i}") for i in range(USERS)]
    per_client = JOBS // CLIENTS
    submitted: dict[str, int] = {}            # job id -> user index
    observations: dict[str, list[tuple[float, str]]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client(n: int) -> None:
        rnd = random.Random(n)
        user = n % USERS
        token = tokens[user]
        try:
            start.wait(timeout=30)
            mine = []
            for _ in range(per_client):
                params = {"duration": round(rnd.uniform(0, 0.05), 3), "steps": 1}
                job_id = server.submit(token, "sleep", params, key=uuid.uuid4().hex)
                mine.append(job_id)
                with lock:
                    submitted[job_id] = user
            # Poll the jobs one by one, each read on a fresh connection (so on whichever
            # worker accepts it). Reads of one job are sequential, so every observation
            # happens after the previous one: a status may only move forward.
            pending = list(mine)
            seen = {j: [] for j in mine}
            deadline = time.monotonic() + 120
            while pending and time.monotonic() < deadline:
                for job_id in list(pending):
                    r = server.call("GET", f"/api/v1/jobs/{job_id}", token=token)
                    if r.status != 200:
                        raise AssertionError(f"GET {job_id}: {r}")
                    seen[job_id].append((time.monotonic(), r.data["status"]))
                    if r.data["status"] in TERMINAL:
                        pending.remove(job_id)
                time.sleep(0.1)
            # Once more after everything finished: a finished job must stay finished.
            for job_id in mine:
                r = server.call("GET", f"/api/v1/jobs/{job_id}", token=token)
                seen[job_id].append((time.monotonic(), r.data["status"]))
            with lock:
                observations.update(seen)
            if pending:
                raise AssertionError(f"client {n}: {len(pending)} job(s) never finished")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            with lock:
                errors.append(f"client {n}: {exc!r}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    assert not any(t.is_alive() for t in threads), "client threads did not finish in time"
    log(f"{JOBS} jobs submitted and finished in {time.monotonic() - t0:.1f}s")
    assert not errors, errors[:5]
    assert len(submitted) == JOBS, "every submission created its own job"

    regressions = {}
    for job_id, seq in observations.items():
        ranks = [RANK[s] for _, s in seq]
        if any(b < a for a, b in zip(ranks, ranks[1:])):
            regressions[job_id] = [s for _, s in seq]
    assert not regressions, f"status went backwards for {len(regressions)} job(s): {dump(dict(list(regressions.items())[:5]))}"

    # The admin's paginated list: every job exactly once, all succeeded on their first attempt.
    items, totals = server.list_all()
    assert set(totals) == {JOBS}, f"page totals {totals}"
    ids = [j["id"] for j in items]
    assert len(ids) == len(set(ids)) == JOBS, f"{len(ids)} items, {len(set(ids))} distinct"
    assert set(ids) == set(submitted)
    not_ok = [j for j in items if j["status"] != "succeeded" or j["attempt"] != 1
              or (j["result"] or {}).get("attempt") != 1]
    assert not not_ok, f"{len(not_ok)} job(s) not succeeded exactly once: {dump(not_ok[:3])}"

    # Each user's own list holds exactly their jobs.
    for user, token in enumerate(tokens):
        mine = {j for j, u in submitted.items() if u == user}
        items, totals = server.list_all(token)
        assert set(totals) == {len(mine)} and {j["id"] for j in items} == mine

    # Straight from the database: one claim per job, no lease left behind.
    rows = server.db_jobs()
    assert len(rows) == JOBS
    bad = [r for r in rows.values() if r["status"] != "succeeded" or r["attempt"] != 1
           or r["lease_owner"] is not None or r["lease_expires_at"] is not None]
    assert not bad, dump(bad[:3])
