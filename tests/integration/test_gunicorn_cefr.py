"""The CEFR model preloaded in a real gunicorn master: workers answer POST /api/v1/cefr after
start and after being recycled (max_requests), i.e. nothing in the master started the OpenMP
pool that makes forked children hang, and the workers share the master's copy of the model."""
from __future__ import annotations

import json
import time

from gunicorn_harness import log, wait_for

TEXTS = ["I like my cat.", "The committee's equivocal stance remains contentious among economists."]


def _pss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_workers_answer_after_start_and_after_recycle(ilgun_factory):
    server = ilgun_factory({"MAX_REQUESTS": "12", "MAX_REQUESTS_JITTER": "0", "CEFR_PRELOAD": "1"})
    assert "CEFR model preloaded" in server.log_text()
    token = server.register("reader")
    first_workers = server.worker_pids()
    served, started = [], time.monotonic()
    for i in range(60):  # 60 requests over 3 workers recycling every 12: every worker is replaced
        resp = server.call("POST", "/api/v1/cefr", {"text": f"{TEXTS[i % 2]} ({i})"}, token, timeout=30)
        assert resp.status == 200, resp.body
        assert resp.data["level"] in ("A1", "A2", "B1", "B2", "C1", "C2")
        served.append(resp.data["level"])
    elapsed = time.monotonic() - started
    wait_for(lambda: len(server.worker_pids()) == 3, 30, what="3 workers")
    later_workers = server.worker_pids()
    assert later_workers - first_workers, "no worker was recycled"
    # the recycled ones answer too (a hang would have failed the loop above within 30 s)
    for _ in range(6):
        assert server.call("POST", "/api/v1/cefr", {"text": TEXTS[1]}, token, timeout=30).status == 200
    pss = {pid: round(_pss_mb(pid)) for pid in [server.pid, *server.worker_pids()]}
    log(f"cefr: 66 requests in {elapsed:.1f}s, recycled {len(later_workers - first_workers)} workers; PSS MB {json.dumps(pss)}")
