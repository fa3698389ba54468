"""A throwaway Server-Sent Events app for bench/live_progress.py: what a live-progress stream
would cost a gthread gunicorn, without any of ilgun's work in the way.

Run by the benchmark as ``gunicorn -c bench/floor_gunicorn.conf.py sse_app:create_app()`` (the
floor's settings: gthread, FLOOR_WORKERS x FLOOR_THREADS, loopback, no access log).

- ``GET /events?seconds=T`` streams ``data: {"n": <k>, "pid": <worker pid>}`` at once and then
  once a second for T seconds (at most 600). A generator response: gthread runs it on one of
  the worker's request threads, which it holds for the whole stream, sleeping included. That is
  the cost being measured.
- ``GET /ping`` answers at once with the worker's pid: the "unrelated request" whose latency
  shows whether open streams starve everything else.
- ``GET /readyz`` answers 200, so FloorServer's readiness check works unchanged.
"""
from __future__ import annotations

import json
import os
import time

from flask import Flask, Response, jsonify, request

MAX_STREAM_SECONDS = 600   # a stream the benchmark forgot still ends


def _event(n: int) -> str:
    return f"data: {json.dumps({'n': n, 'pid': os.getpid()})}\n\n"


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/readyz")
    def readyz():
        return jsonify({"success": True, "message": "ready", "data": {"pid": os.getpid()}})

    @app.get("/ping")
    def ping():
        return jsonify({"success": True, "message": "pong", "data": {"pid": os.getpid()}})

    @app.get("/events")
    def events():
        seconds = min(max(request.args.get("seconds", 60, type=int), 0), MAX_STREAM_SECONDS)

        def stream():
            # The first event goes out at once so the client knows the stream holds a thread;
            # a closed client shows up as a failed write on a later event, ending the stream.
            yield _event(0)
            for n in range(1, seconds + 1):
                time.sleep(1.0)
                yield _event(n)

        return Response(stream(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
