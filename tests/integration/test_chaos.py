"""The chaos loop (tests/integration/chaos.py) under pytest: rounds of jobs of every kind on a
real gunicorn, each round with a fault (SIGKILL of a worker, SIGTERM + restart, HUP, SIGKILL of
the whole group + restart), then the invariants: every job final exactly once, never two live
executions, no lease overstayed, no orphan files.

ILGUN_CHAOS_ROUNDS (default 3: about a minute on 2 cores) and ILGUN_CHAOS_PG_ROUNDS (default 1)
set the rounds; ILGUN_CHAOS_SEED replays a run (the seed is printed and saved in
test-artifacts/reliability/chaos*.json)."""
from __future__ import annotations

import json
import os

import chaos
import pytest
from gunicorn_harness import log

ROUNDS = int(os.environ.get("ILGUN_CHAOS_ROUNDS", "3"))
PG_ROUNDS = int(os.environ.get("ILGUN_CHAOS_PG_ROUNDS", "1"))


def _time_budget(rounds: int) -> int:
    """pytest-timeout for a run of ``rounds``: a round takes about 10 s on 2 cores (up to ~15 s
    with a slow drain), so 20 s each plus start-up; never below the suite's 300 s. A fixed 300 s
    cut `make reliability CHAOS_ROUNDS=30` (or the documented 50) off in its last rounds."""
    return max(300, 60 + 20 * rounds)


def _seed() -> int | None:
    return int(os.environ["ILGUN_CHAOS_SEED"]) if os.environ.get("ILGUN_CHAOS_SEED") else None


def _check(summary: dict) -> None:
    t = summary["totals"]
    problems = json.dumps(summary["violations"][:20], indent=1)
    assert not summary["violations"], (f"seed {summary['seed']}: {t['violations']} invariant violation(s) "
                                       f"(ILGUN_CHAOS_SEED={summary['seed']} replays the schedule):\n{problems}")
    assert t["lost"] == 0 and t["duplicates"] == 0, t
    assert t["jobs"] == t["succeeded"] + t["abandoned"], t
    # the faults hit running jobs (recovered by the sweep or handed back): otherwise the run
    # proved nothing
    assert t["interrupted"] >= 1, f"no fault interrupted a job: {t}"
    assert summary["monitor"]["samples"] > 0, summary["monitor"]


@pytest.mark.timeout(_time_budget(ROUNDS))
def test_chaos_rounds_on_sqlite(ilgun_factory, slow_files):
    rounds = ROUNDS
    server = ilgun_factory(chaos.settings(), start=False, name="chaos")
    summary = chaos.Chaos(server, slow_files, rounds, seed=_seed(), out=chaos.ARTIFACTS / "chaos.json").run()
    log(f"chaos (sqlite) totals: {json.dumps(summary['totals'])}")
    _check(summary)


@pytest.mark.timeout(_time_budget(PG_ROUNDS))
def test_chaos_round_on_postgresql(pg_database, ilgun_factory, slow_files):
    rounds = PG_ROUNDS
    server = ilgun_factory({**chaos.settings(), "DATABASE_URL": pg_database}, start=False, name="chaos")
    summary = chaos.Chaos(server, slow_files, rounds, seed=_seed(),
                          out=chaos.ARTIFACTS / "chaos-postgresql.json").run()
    log(f"chaos (postgresql) totals: {json.dumps(summary['totals'])}")
    _check(summary)
