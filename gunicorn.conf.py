"""gunicorn settings for ilgun. gunicorn reads ./gunicorn.conf.py by default (or pass -c).

Worker and thread counts come from ``service.profile.choose_profile`` (run
``python -m service.profile`` to see what it picks and why). Environment variables:

  ILGUN_PROFILE        small | medium | large | auto (default auto: by CPU cores)
  WEB_CONCURRENCY      gunicorn workers, overrides the profile
  THREADS              threads per worker, overrides the profile
  MAX_WORKERS          job executor threads per worker, overrides the profile
  HOST, PORT           listen address (default 127.0.0.1:8000)
  GRACEFUL_TIMEOUT     seconds a stopping worker gets before it is killed (default 30)
  TIMEOUT              seconds of silence before a worker is killed and restarted (default 60)
  MAX_REQUESTS         restart a worker after this many requests, 0 = never (default 2000)
  MAX_REQUESTS_JITTER  random extra requests so workers do not restart together (default 200)

Every gunicorn worker runs the app and its own job engine: ``post_worker_init`` starts the
engine and ``worker_exit`` stops it, so ``preload_app`` stays off — threads and database
connections must be created in the worker, never inherited across fork. The one thing loaded
in the master is the CEFR model (``on_starting``, no inference: see ``_preload_cefr``).

``on_starting`` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before any worker exists, so
/metrics adds up every worker's counts; ``child_exit`` archives an exited worker's metric files.

Names in this module that match gunicorn settings are read as settings; helpers start with
an underscore so they can never be mistaken for one.
"""
import os
import sys

# gunicorn's console script does not put the working directory on sys.path before reading
# this file, so make the project importable from wherever gunicorn was started.
_PROJECT_ROOT = os.path.dirname(os.path.abspath(__file__))
if _PROJECT_ROOT not in sys.path:
    sys.path.insert(0, _PROJECT_ROOT)

from service.profile import choose_profile, env_int as _env_int  # noqa: E402

# Seconds of graceful_timeout kept back from the job engine's stop: the arbiter SIGKILLs a
# worker graceful_timeout after SIGTERM, and the engine must finish handing back its jobs
# (and the worker must exit) before that.
_RUNTIME_STOP_MARGIN_SECONDS = 3

_profile = choose_profile(os.environ)

worker_class = "gthread"
workers = _profile.workers
threads = _profile.threads

_host = os.environ.get("HOST", "").strip() or "127.0.0.1"
_port = _env_int(os.environ, "PORT", 8000)
if ":" in _host and not _host.startswith("["):
    _host = f"[{_host}]"  # an IPv6 address needs brackets in host:port
bind = f"{_host}:{_port}"

graceful_timeout = _env_int(os.environ, "GRACEFUL_TIMEOUT", 30)
timeout = _env_int(os.environ, "TIMEOUT", 60)
# Periodic worker restarts bound slow memory growth (job kinds importing large libraries,
# fragmentation); the jitter keeps all workers from restarting at the same moment.
max_requests = _env_int(os.environ, "MAX_REQUESTS", 2000, minimum=0)
max_requests_jitter = _env_int(os.environ, "MAX_REQUESTS_JITTER", 200, minimum=0)

# The app reads MAX_WORKERS to size its job executor. Workers are forked from this process, so
# setting it here reaches them; raw_env repeats it for anyone reading gunicorn's settings.
os.environ["MAX_WORKERS"] = str(_profile.max_workers)
os.environ["WEB_THREADS"] = str(_profile.threads)   # sizes the database pool (config DB_POOL_SIZE)
raw_env = [f"MAX_WORKERS={_profile.max_workers}", f"WEB_THREADS={_profile.threads}"]

preload_app = False
# The access log goes to stdout ("-") unless GUNICORN_ACCESSLOG names a file, or is set empty
# to turn it off (behind a proxy that logs requests already).
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-").strip() or None
logger_class = "service.access_log.JsonAccessLogger"  # one JSON object per request

# gunicorn 27 opens a control socket at one fixed path per user ($HOME/.gunicorn/gunicorn.ctl):
# two ilgun copies side by side would fight over it. Off unless a path is given.
_control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip()
if _control_socket:
    control_socket = _control_socket
else:
    control_socket_disable = True


def when_ready(server):
    server.log.info(
        "ilgun profile %r: workers=%d threads=%d MAX_WORKERS=%d",
        _profile.name, _profile.workers, _profile.threads, _profile.max_workers,
    )
    for reason in _profile.reasons:
        server.log.info("  - %s", reason)


def on_starting(server):
    _prepare_metrics_dir(server.log)
    _preload_cefr(server.log)


def _preload_cefr(log):
    """Load the CEFR model here in the master, once, so the forked workers share its ~300 MB
    (copy-on-write; gc.freeze keeps the collector from touching, and so copying, those pages).
    No inference here: an OpenMP pool started before fork hangs the children (the workers warm
    it up after fork, service/runtime.py). Off with CEFR_PRELOAD=0; a missing model is logged."""
    from config import load_config
    config = load_config()
    if not config.get("CEFR_PRELOAD"):
        return
    import gc
    import time
    started = time.monotonic()
    try:
        from service.cefr.classifier import preload
        model = preload(config)
    except Exception:  # noqa: BLE001 - the service runs without it; cefr jobs load it themselves
        log.exception("CEFR model preload failed; each worker will load it on first use")
        return
    gc.freeze()
    if model is not None:
        log.info("CEFR model preloaded from %s in %.1fs", model.path, time.monotonic() - started)


def _prepare_metrics_dir(log):
    """Turn on prometheus_client's multiprocess mode in the workers (service/metrics.py), so
    /metrics counts every worker's requests and jobs whichever worker answers it.

    prometheus_client picks the mode when it is first imported, from PROMETHEUS_MULTIPROC_DIR:
    that happens in each worker as it loads the app, after this ran in the master (which never
    imports it before). An operator's PROMETHEUS_MULTIPROC_DIR is used as it is (empty it
    before each start; a tmpfs such as /dev/shm suits it). Otherwise each master gets a fresh,
    empty <ILGUN_DATA>/prometheus/<host>-<pid>, and the folders of this host's masters that
    are gone are removed. A HUP reload keeps the folder: this hook runs once per master."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from config import load_config

    settings = load_config()
    if not settings["METRICS_ENABLED"]:
        return
    import shutil
    import socket
    import tempfile

    root = os.path.join(settings["ILGUN_DATA"], "prometheus")
    prefix = f"{socket.gethostname()}-"
    path = os.path.join(root, f"{prefix}{os.getpid()}")
    try:
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):
            pid = name[len(prefix):]
            if name.startswith(prefix) and pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        os.makedirs(path)
    except OSError as exc:  # a read-only ILGUN_DATA must not stop the server
        path = tempfile.mkdtemp(prefix="ilgun-prometheus-")
        log.warning("metrics: cannot use %s (%s); per-worker files in %s instead", root, exc, path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    log.info("metrics: per-worker files in %s", path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def child_exit(server, worker):
    # In the master, after a worker exited for any reason (kill -9 included): fold its metric
    # files into the archive, so they do not pile up with every recycled worker.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        from service.metrics import worker_exited
        worker_exited(worker.pid)
    except Exception:
        # Its counts are still read from its own files; only the archiving is left undone.
        server.log.exception("metrics: archiving the files of worker %s failed", worker.pid)


def _runtime_function(log, name):
    """``service.runtime.<name>``, or None (logged) when the module or function is missing,
    so a half-deployed runtime leaves the web side serving instead of crash-looping workers."""
    try:
        from service import runtime
    except ImportError:
        log.exception("cannot import service.runtime; the job engine will not run in this worker")
        return None
    function = getattr(runtime, name, None)
    if function is None:
        log.error("service.runtime has no %s(); the job engine will not run in this worker", name)
    return function


def post_worker_init(worker):
    start_worker_runtime = _runtime_function(worker.log, "start_worker_runtime")
    if start_worker_runtime is None:
        return
    # Errors raised by the runtime itself propagate: a worker whose engine failed to start
    # should fail to boot loudly rather than serve without running jobs.
    start_worker_runtime(worker.wsgi, label=f"gunicorn-{worker.pid}")
    worker.ilgun_runtime_started = True
    _stop_engine_on_sigterm(worker)


def _stop_budget(worker, server=None) -> float:
    # server.cfg (the same object as worker.cfg in a real worker) holds the final value,
    # including a --graceful-timeout given on the command line.
    cfg = getattr(server, "cfg", None) or getattr(worker, "cfg", None)
    grace = getattr(cfg, "graceful_timeout", graceful_timeout)
    return max(1.0, grace - _RUNTIME_STOP_MARGIN_SECONDS)


def _stop_engine_on_sigterm(worker):
    """Start handing jobs back the moment SIGTERM arrives.

    The master SIGKILLs a worker graceful_timeout after SIGTERM, but gthread first drains its
    open connections (a slow client can hold it for all of that) and only then calls
    worker_exit. So the engine's stop starts here, in a thread, with its budget counted from
    the signal; worker_exit waits for that thread. gunicorn's own handler (installed by
    init_signals before this hook) still runs after ours."""
    import signal
    import threading
    import time

    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        if getattr(worker, "ilgun_stopper", None) is None:
            stop_worker_runtime = _runtime_function(worker.log, "stop_worker_runtime")
            if stop_worker_runtime is not None:
                budget = _stop_budget(worker)
                worker.ilgun_stop_deadline = time.monotonic() + budget + 3
                worker.ilgun_stopper = threading.Thread(
                    target=stop_worker_runtime, args=(worker.wsgi,), kwargs={"timeout": budget},
                    name="ilgun-stop", daemon=True)
                worker.ilgun_stopper.start()
        if callable(previous):
            previous(signum, frame)
        else:  # no handler before ours: keep the default meaning of SIGTERM
            import os
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def worker_exit(server, worker):
    # gunicorn also calls this hook in the master for a worker that was already gone; only a
    # worker process that started the runtime has anything to stop.
    if not getattr(worker, "ilgun_runtime_started", False):
        return
    stopper = getattr(worker, "ilgun_stopper", None)
    if stopper is not None:  # SIGTERM already started the stop: wait for it, no fresh budget
        import time
        stopper.join(max(0.0, worker.ilgun_stop_deadline - time.monotonic()))
    else:
        # Exits without SIGTERM (max_requests recycle): nothing is killing us, stop here.
        stop_worker_runtime = _runtime_function(server.log, "stop_worker_runtime")
        if stop_worker_runtime is None:
            return
        try:
            stop_worker_runtime(worker.wsgi, timeout=_stop_budget(worker, server))
        except Exception:
            # The worker is exiting either way; make sure the reason is in the log.
            server.log.exception("stopping the job engine of worker %s failed", worker.pid)
    _end_runs_left_behind(worker, server.log)


def _end_runs_left_behind(worker, log):
    """Jobs that ignored the stop were handed back and may already run on another worker: end
    this process now instead of letting Python wait for their threads. After SIGTERM the master
    would SIGKILL us at graceful_timeout anyway, but after a HUP or a max_requests recycle
    nothing would, and the stale run would go on beside the new one (found by the chaos test)."""
    runs_left_behind = _runtime_function(log, "runs_left_behind")
    left = runs_left_behind(worker.wsgi) if runs_left_behind is not None else []
    if not left:
        return
    import logging
    import os
    import sys
    log.warning("worker %s exits now: %d handed-back job(s) still running here: %s",
                worker.pid, len(left), ", ".join(left))
    for name in (None, "gunicorn.error", "gunicorn.access"):  # os._exit skips the usual flushes
        for handler in logging.getLogger(name).handlers:
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def worker_int(worker):
    worker.log.info("worker %s interrupted (SIGINT/SIGQUIT), shutting down", worker.pid)


def worker_abort(worker):
    worker.log.warning(
        "worker %s aborted (SIGABRT), usually because a request ran past timeout=%ss",
        worker.pid, getattr(worker.cfg, "timeout", timeout),
    )
