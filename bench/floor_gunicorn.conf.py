"""gunicorn settings for the flask+gunicorn floor (bench/floor_app.py), started by
bench/floor_runner.py as ``gunicorn -c bench/floor_gunicorn.conf.py floor_app:create_app()``.

The serving side of ilgun's gunicorn.conf.py and nothing else: gthread, the profile's workers
and threads (FLOOR_WORKERS / FLOOR_THREADS, default 3 x 2 = ilgun's medium profile), loopback
only, no app preloading. Unlike ilgun: no access log (ilgun writes one line per request to its
log), no MAX_REQUESTS worker recycling and no job engine hooks — the floor leaves out every
cost it can.
"""
import os

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

worker_class = "gthread"
workers = int(os.environ.get("FLOOR_WORKERS", "3"))
threads = int(os.environ.get("FLOOR_THREADS", "2"))
bind = f"127.0.0.1:{int(os.environ['FLOOR_PORT'])}"
chdir = _BENCH_DIR          # floor_app is imported from bench/
preload_app = False
accesslog = None
graceful_timeout = 5
timeout = 60
max_requests = 0
# gunicorn 27 opens a control socket at one fixed path per user; the floor never needs it and
# must not fight an ilgun (or another floor) started next to it.
control_socket_disable = True
