"""Start and stop the job dispatcher inside one serving process.

gunicorn calls these from its post_worker_init and worker_exit hooks (gunicorn.conf.py), so
the executor and its threads are created after the fork, never in the master.
"""
from __future__ import annotations

import logging
import sys

from service.engine.dispatcher import Dispatcher

log = logging.getLogger(__name__)


def start_worker_runtime(app, label: str = "worker") -> Dispatcher:
    svc = app.extensions["ilgun"]
    if svc.dispatcher is not None:
        return svc.dispatcher
    dispatcher = Dispatcher(svc.engine, svc.kinds, app.config, svc.workspace,
                            slots=int(app.config["MAX_WORKERS"]), observers=svc.observers)
    svc.dispatcher = dispatcher
    dispatcher.start()
    log.info("%s: dispatcher %s running", label, dispatcher.worker_id)
    if app.config.get("OCR_PRELOAD"):  # load and warm the OCR engine now, not on the first job
        from service.ocr import get_cache
        get_cache(app.config).preload(app.config["OCR_ENGINE"])
    # the CEFR model preloaded in the gunicorn master: its first inference, here after the fork
    from service.cefr.classifier import warm_up
    warm_up(app.config)
    return dispatcher


def stop_worker_runtime(app, timeout: float | None = None) -> list[str]:
    svc = app.extensions["ilgun"]
    dispatcher, svc.dispatcher = svc.dispatcher, None
    if dispatcher is None:
        return []
    grace = app.config["SHUTDOWN_GRACE"] if timeout is None else timeout
    handed_back = dispatcher.stop(timeout=grace)
    svc.runs_left_behind = dispatcher.active_ids  # see runs_left_behind()
    ocr_cache = sys.modules.get("service.ocr.cache")   # not imported: no OCR ran here
    if ocr_cache is not None:
        ocr_cache.close_process_cache()   # the engine processes exit now, not a second after us
    return handed_back


def runs_left_behind(app) -> list[str]:
    """Jobs whose threads still run in this process after the dispatcher stopped: they ignored the
    stop, were handed back to the queue and may already run on another worker. Their writes are
    fenced by the run token, but their work is not (CPU, memory, the job folder's lock), and
    Python waits for executor threads before a process exits: gunicorn's worker_exit hook ends
    the process at once when this is not empty."""
    pending = getattr(app.extensions["ilgun"], "runs_left_behind", None)
    return pending() if pending is not None else []
