"""Downloads end to end: API → queue → dispatcher → real HTTP server on 127.0.0.1 → files."""
from __future__ import annotations

import hashlib
import time
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import sign_up
from tests.integration.gunicorn_harness import LoopbackHTTPServer

PAYLOAD = b"ilgun " * 20_000  # 120,000 bytes


class Origin(LoopbackHTTPServer):
    """A local origin server that counts requests per path."""

    def __init__(self):
        self.hits: dict[str, int] = {}
        self.fail_first: set[str] = set()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                origin.hits[self.path] = origin.hits.get(self.path, 0) + 1
                if self.path in origin.fail_first and origin.hits[self.path] == 1:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.startswith("/slow"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(PAYLOAD)))
                    self.end_headers()
                    try:
                        for i in range(0, len(PAYLOAD), 4000):
                            self.wfile.write(PAYLOAD[i:i + 4000])
                            self.wfile.flush()
                            time.sleep(0.1)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if self.path.startswith("/missing"):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD)

            def log_message(self, *args):
                pass

        super().__init__(Handler, name="download-origin")
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()


@pytest.fixture
def origin():
    server = Origin()
    yield server
    server.stop()


def test_download_succeeds_with_checksum_and_file(alice, dispatcher, origin):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    job = alice.submit("download", {"url": f"{origin.url}/data.bin", "sha256": sha}).get_json()["data"]
    done = alice.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["sha256"] == sha and done["result"]["size"] == len(PAYLOAD)
    assert done["result"]["filename"] == "data.bin"
    body = alice.get(f"/api/v1/jobs/{job['id']}/files/data.bin")
    assert body.status_code == 200 and body.data == PAYLOAD


def test_wrong_checksum_fails_and_leaves_no_file(app, alice, dispatcher, origin):
    job = alice.submit("download", {"url": f"{origin.url}/data.bin", "sha256": "0" * 64}).get_json()["data"]
    done = alice.wait(job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "CHECKSUM_MISMATCH"
    assert done["files"] == []
    assert not app.extensions["ilgun"].workspace.job_dir(done["owner_id"], job["id"]).exists()


def test_upstream_5xx_is_retried(app_factory, origin):
    app = app_factory()
    app.extensions["ilgun"].kinds["download"].retry_backoff_seconds = 0.05
    alice = sign_up(app, app.test_client(), "alice")
    from service.runtime import start_worker_runtime
    start_worker_runtime(app)
    origin.fail_first.add("/flaky.bin")
    try:
        job = alice.submit("download", {"url": f"{origin.url}/flaky.bin"}).get_json()["data"]
        done = alice.wait(job["id"], timeout=20)
    finally:
        app.extensions["ilgun"].kinds["download"].retry_backoff_seconds = 5
    assert done["status"] == "succeeded" and done["attempt"] == 2
    assert origin.hits["/flaky.bin"] == 2


def test_upstream_404_fails_at_once(alice, dispatcher, origin):
    job = alice.submit("download", {"url": f"{origin.url}/missing.bin"}).get_json()["data"]
    done = alice.wait(job["id"])
    assert done["status"] == "failed" and done["attempt"] == 1
    assert done["error"]["code"] == "UPSTREAM_CLIENT_ERROR"


def test_download_progress_and_cancel(app, alice, dispatcher, origin):
    job = alice.submit("download", {"url": f"{origin.url}/slow.bin"}).get_json()["data"]
    deadline = time.monotonic() + 10
    while True:
        view = alice.get(f"/api/v1/jobs/{job['id']}").get_json()["data"]
        if view["status"] == "running" and 0 < view["progress"] < 100:
            break
        assert time.monotonic() < deadline, view
        time.sleep(0.05)
    alice.post(f"/api/v1/jobs/{job['id']}/cancel")
    done = alice.wait(job["id"], timeout=3)
    assert done["status"] == "cancelled"
    assert not app.extensions["ilgun"].workspace.job_dir(done["owner_id"], job["id"]).exists()


def test_oversize_download_fails(app_factory, origin):
    app = app_factory(DOWNLOAD_MAX_BYTES=1000)
    alice = sign_up(app, app.test_client(), "alice")
    from service.runtime import start_worker_runtime
    start_worker_runtime(app)
    job = alice.submit("download", {"url": f"{origin.url}/big.bin"}).get_json()["data"]
    done = alice.wait(job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "FILE_TOO_LARGE"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "2130706433", "0x7f.0.0.1", "127.1"])
def test_ssrf_guard_refuses_loopback_targets_end_to_end(app_factory, origin, host):
    """With the guard on (the default), no request reaches the loopback origin."""
    app = app_factory(DOWNLOAD_ALLOW_PRIVATE_URLS=False)
    alice = sign_up(app, app.test_client(), "alice")
    port = origin.url.rsplit(":", 1)[1]
    resp = alice.submit("download", {"url": f"http://{host}:{port}/data.bin"})
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["error_code"] == "URL_NOT_ALLOWED"
    assert origin.hits == {}
    assert alice.get("/api/v1/jobs").get_json()["data"]["total"] == 0


def test_ssrf_guard_is_enforced_at_run_time_too(app_factory, origin):
    """A job accepted while private URLs were allowed, run by a worker where they are not
    (or a name that only resolves to a private address later): refused at connect time."""
    lenient = app_factory(DOWNLOAD_ALLOW_PRIVATE_URLS=True)
    alice = sign_up(lenient, lenient.test_client(), "alice")
    job = alice.submit("download", {"url": f"{origin.url}/data.bin"}).get_json()["data"]
    strict = app_factory(DOWNLOAD_ALLOW_PRIVATE_URLS=False)
    from service.runtime import start_worker_runtime
    start_worker_runtime(strict)
    done = alice.wait(job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "URL_NOT_ALLOWED"
    assert origin.hits == {}


@pytest.mark.parametrize("url,code", [
    ("file:///etc/passwd", "URL_SCHEME_NOT_ALLOWED"),
    ("gopher://127.0.0.1/", "URL_SCHEME_NOT_ALLOWED"),
    ("http://user:pw@example.com/", "URL_CREDENTIALS_NOT_ALLOWED"),
    ("not a url", "URL_INVALID"),
])
def test_bad_urls_are_refused_at_submit(alice, url, code):
    resp = alice.submit("download", {"url": url})
    assert resp.status_code == 400 and resp.get_json()["error_code"] == code
