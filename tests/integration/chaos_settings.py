"""The times of the chaos loop (tests/integration/chaos.py): what its server runs with
(settings()), how long it waits, and the tolerances of its checks."""
from __future__ import annotations

LEASE = 3.0           # LEASE_SECONDS: recovery after a kill takes about this long
SWEEP = 0.5           # SWEEP_INTERVAL
GRACE = 6             # GRACEFUL_TIMEOUT: the job engine waits GRACE - 3 s, then hands jobs back
LEASE_MARGIN = 3.0    # invariant 3: tolerated lag of the sweep behind an expired lease, beyond SWEEP
DRAIN_TIMEOUT = 90.0  # seconds a round waits for its jobs to finish
LOG_TOLERANCE = 0.05  # seconds: clock slack when comparing times written on one host
FETCH_TOLERANCE = 0.3 # seconds: crawl requests of two workers closer than this are not counted
CRAWL_DELAY = 0.3
CRAWL_PAGES = 12
SLEEP_STEP = 0.25


def settings(cefr_preload: bool = True) -> dict[str, str]:
    """What the chaos server runs with, on top of the harness's BASE_SETTINGS. CEFR_PRELOAD is
    on, as in production (the harness turns it off to start faster): without it every new
    worker loads the model inside its first cefr job, 5-45 s on a busy 2-core host."""
    return {"LEASE_SECONDS": str(LEASE), "SWEEP_INTERVAL": str(SWEEP), "GRACEFUL_TIMEOUT": str(GRACE),
            "CEFR_PRELOAD": "1" if cefr_preload else "0"}
