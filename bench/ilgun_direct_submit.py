"""Submit no-op ``sleep`` jobs straight into ilgun's database, without HTTP.

Started by bench/ilgun_runner.py as a separate process next to a running gunicorn: it builds
the app on the same ILGUN_DATA / DATABASE_URL (from the environment), calls
``JobService.submit`` as the admin from ``--clients`` threads, and writes what it submitted as
JSON to ``--out``. This process runs no dispatcher, so it wakes no engine: the gunicorn
workers find the jobs by their claim loop (woken by their own finishing jobs, or by
POLL_INTERVAL when idle).

    python bench/ilgun_direct_submit.py --jobs 2000 --clients 8 --out submitted.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench_support import REPO_ROOT, SubmitThreads

NOOP_PARAMS = {"duration": 0, "steps": 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed for submitting")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    from service import create_app

    if not os.environ.get("ILGUN_DATA"):
        parser.error("ILGUN_DATA must point at the running server's data dir")
    app = create_app({"ILGUN_DATA": os.environ["ILGUN_DATA"], "START_DISPATCHER": False})
    svc = app.extensions["ilgun"]
    admin = svc.users.by_username(app.config["ILGUN_ADMIN_USERNAME"])
    if admin is None:
        parser.error("no admin account in that database; run `flask --app service create-admin`")
    viewer = {"id": admin["id"], "role": "admin"}

    def submit_one(_i: int) -> str:
        job, _created = svc.submit(viewer, "sleep", NOOP_PARAMS)
        return job["id"]

    cpu_before = time.process_time()
    submitters = SubmitThreads(args.jobs, args.clients, submit_one).start()
    try:
        submitters.join(timeout=args.timeout)
    finally:
        ids = [i for i in submitters.results if i]
        args.out.write_text(json.dumps({
            "first_submit_at": submitters.first_submit_at, "last_submit_at": submitters.last_submit_at,
            "ids": ids, "errors": submitters.errors, "cpu_s": time.process_time() - cpu_before}))
        svc.engine.dispose()
    print(f"submitted {len(ids)} jobs, {len(submitters.errors)} errors", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
