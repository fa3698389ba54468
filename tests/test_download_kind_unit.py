"""DownloadKind.validate and DownloadKind.run against real HTTP servers on 127.0.0.1.

The runs use the engine's own RunContext (no database: progress goes to a list). Every server
here listens on loopback, so private URLs are allowed in the config except where a test checks
that they are refused.
"""
from __future__ import annotations

import gzip
import hashlib
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler

import pytest

from service.engine.context import RunContext
from service.engine.kind import JobCancelled, JobFailed, TransientJobError
from service.errors import UrlNotAllowed, ValidationError
from service.kinds.download import DownloadKind
from tests.integration.gunicorn_harness import LoopbackHTTPServer

MAX_BYTES = 100_000
CONFIG = {
    "DOWNLOAD_ALLOW_PRIVATE_URLS": True,
    "DOWNLOAD_MAX_BYTES": MAX_BYTES,
    "DOWNLOAD_CONNECT_TIMEOUT": 2.0,
    "DOWNLOAD_READ_TIMEOUT": 0.5,
    "DOWNLOAD_MAX_REDIRECTS": 3,
    "DOWNLOAD_USER_AGENT": "ilgun-test/1",
}
BODY = bytes(range(256)) * 200  # 51,200 bytes


class LocalServer(LoopbackHTTPServer):
    """An HTTP server on 127.0.0.1 that records every request path; serving once made."""

    def __init__(self, routes: dict):
        self.routes, self.paths = routes, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.paths.append(self.path)
                server.last_headers = dict(self.headers)
                route = server.routes.get(self.path.split("?")[0])
                try:
                    if route is None:
                        send(self, 404, b"nope")
                    else:
                        route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on purpose (size cap, cancel, timeout)

            def log_message(self, *args):
                pass

        super().__init__(Handler, "download-origin", poll_interval=0.05)
        self.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.stop()


def send(handler, status, body=b"", headers=None, length=True):
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    if length:
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def drip(chunks, pause, chunk=b"x" * 1000, length=None):
    """Send ``chunks`` pieces with ``pause`` seconds between them (HTTP/1.0: ends at close)."""
    def route(handler):
        handler.send_response(200)
        if length is not None:
            handler.send_header("Content-Length", str(length))
        handler.end_headers()
        for _ in range(chunks):
            handler.wfile.write(chunk)
            handler.wfile.flush()
            time.sleep(pause)
    return route


@pytest.fixture
def server():
    started = []

    def start(routes):
        s = LocalServer(routes)
        started.append(s)
        return s
    yield start
    for s in started:
        s.close()


class RecordingContext(RunContext):
    """The engine's context, with every progress call kept for the assertions."""

    def progress(self, percent, message=None):
        self.calls.append((percent, message))
        super().progress(percent, message)


@pytest.fixture
def run_download(tmp_path):
    kind = DownloadKind()

    def run(params, config=None, attempt=1, validate=True, on_context=None):
        config = {**CONFIG, **(config or {})}
        root = tmp_path / f"attempt{attempt}"
        out, tmp = root / "out", root / "tmp"
        out.mkdir(parents=True)
        tmp.mkdir()
        job = {"id": str(uuid.uuid4()), "owner_id": 1, "kind": "download", "attempt": attempt,
               "run_token": "token", "params": kind.validate(params, config) if validate else params}
        ctx = RecordingContext(job, config, lambda: (out, tmp), lambda *args: True)
        ctx.calls = []
        run.ctx = ctx
        if on_context:
            on_context(ctx)
        return kind.run(ctx)
    return run


def files(ctx):
    return sorted(p.name for p in ctx.workspace.iterdir()), sorted(p.name for p in ctx.tmp_dir.iterdir())


# --- validate -------------------------------------------------------------------------------

@pytest.mark.parametrize("params,field", [
    ({}, "url"), ({"url": 5}, "url"), ({"url": "  "}, "url"),
    ({"url": "http://example.com/", "extra": 1}, "extra"),
    ({"url": "http://example.com/", "filename": "../x"}, "filename"),
    ({"url": "http://example.com/", "filename": "a/b"}, "filename"),
    ({"url": "http://example.com/", "filename": ".hidden"}, "filename"),
    ({"url": "http://example.com/", "filename": "x\x00y"}, "filename"),
    ({"url": "http://example.com/", "filename": 7}, "filename"),
    ({"url": "http://example.com/", "sha256": "abc"}, "sha256"),
    ({"url": "http://example.com/", "sha256": "g" * 64}, "sha256"),
])
def test_validate_refuses_bad_params(params, field):
    with pytest.raises(ValidationError) as info:
        DownloadKind().validate(params, CONFIG)
    assert info.value.code == "VALIDATION_ERROR"
    assert info.value.details["field"] == field


@pytest.mark.parametrize("url,code", [
    ("ftp://example.com/f", "URL_SCHEME_NOT_ALLOWED"),
    ("http://u:p@example.com/", "URL_CREDENTIALS_NOT_ALLOWED"),
    ("http://127.0.0.1/", "URL_NOT_ALLOWED"),
    ("http://2130706433/", "URL_NOT_ALLOWED"),
    ("http://169.254.169.254/", "URL_NOT_ALLOWED"),
])
def test_validate_refuses_urls_with_their_codes(url, code):
    with pytest.raises(UrlNotAllowed) as info:
        DownloadKind().validate({"url": url}, {**CONFIG, "DOWNLOAD_ALLOW_PRIVATE_URLS": False})
    assert info.value.code == code
    assert info.value.details["field"] == "url"


def test_validate_normalises():
    params = DownloadKind().validate({"url": " https://example.com/a.tar.gz ", "filename": "a.tgz",
                                      "sha256": "AB" * 32}, CONFIG)
    assert params == {"url": "https://example.com/a.tar.gz", "filename": "a.tgz", "sha256": "ab" * 32}


# --- run ----------------------------------------------------------------------------------------

def test_download_with_length(server, run_download):
    s = server({"/data/file.bin": lambda h: send(h, 200, BODY, {"Content-Type": "application/x-test"})})
    result = run_download({"url": s.url("/data/file.bin")})
    ctx = run_download.ctx
    assert (ctx.workspace / "file.bin").read_bytes() == BODY
    assert result == {
        "url": s.url("/data/file.bin"), "final_url": s.url("/data/file.bin"), "filename": "file.bin",
        "size": len(BODY), "content_type": "application/x-test",
        "sha256": hashlib.sha256(BODY).hexdigest(), "redirects": [], "http_status": 200,
    }
    assert s.last_headers["User-Agent"] == "ilgun-test/1"
    assert files(ctx) == (["file.bin"], [])


@pytest.mark.parametrize("path,headers,params,expected", [
    ("/x", {"Content-Disposition": "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"}, {}, "résumé.pdf"),
    ("/x", {"Content-Disposition": 'attachment; filename="../../etc/passwd"'}, {}, "passwd"),
    ("/x", {"Content-Disposition": 'attachment; filename=".bashrc"'}, {}, "bashrc"),
    ("/dir/report%20v2.csv", {}, {}, "report v2.csv"),
    ("/", {}, {}, "download"),
    ("/x.bin", {"Content-Disposition": 'attachment; filename="server.bin"'}, {"filename": "mine.bin"}, "mine.bin"),
])
def test_file_name_choice(server, run_download, path, headers, params, expected):
    s = server({path: lambda h: send(h, 200, b"abc", headers)})
    result = run_download({"url": s.url(path), **params})
    assert result["filename"] == expected
    assert (run_download.ctx.workspace / expected).read_bytes() == b"abc"


def test_redirects_are_followed_and_listed(server, run_download):
    s = server({"/a": lambda h: send(h, 302, headers={"Location": "/b"}),
                "/b": lambda h: send(h, 301, headers={"Location": "/files/final.txt"}),
                "/files/final.txt": lambda h: send(h, 200, b"final")})
    result = run_download({"url": s.url("/a")})
    assert result["final_url"] == s.url("/files/final.txt")
    assert result["filename"] == "final.txt"
    assert result["redirects"] == [{"url": s.url("/a"), "status": 302}, {"url": s.url("/b"), "status": 301}]


def test_too_many_redirects(server, run_download):
    s = server({"/loop": lambda h: send(h, 302, headers={"Location": "/loop"})})
    with pytest.raises(JobFailed) as info:
        run_download({"url": s.url("/loop")})
    assert info.value.code == "TOO_MANY_REDIRECTS"
    assert len(s.paths) == 4  # the first request and three redirects


def test_slow_body_within_read_timeout_succeeds_with_byte_progress(server, run_download):
    s = server({"/slow": drip(chunks=12, pause=0.1)})
    result = run_download({"url": s.url("/slow")})
    assert result["size"] == 12_000
    calls = run_download.ctx.calls
    assert calls[-1] == (100.0, "12000 bytes")
    partial = calls[:-1]
    assert partial and all(p < 100 and msg.endswith(" bytes") for p, msg in partial)


def test_progress_uses_content_length(server, run_download):
    s = server({"/slow": drip(chunks=8, pause=0.15, length=8000)})
    run_download({"url": s.url("/slow")})
    partial = run_download.ctx.calls[:-1]
    assert partial and all(0 < p < 100 and msg.endswith("of 8000 bytes") for p, msg in partial)


def test_no_answer_in_time_is_a_transient_timeout(server, run_download):
    s = server({"/hang": lambda h: time.sleep(1.5)})
    started = time.monotonic()
    with pytest.raises(TransientJobError) as info:
        run_download({"url": s.url("/hang")})
    assert info.value.code == "TIMEOUT"
    assert time.monotonic() - started < 1.4


def test_stall_mid_body_is_a_transient_timeout_and_leaves_no_file(server, run_download):
    s = server({"/stall": drip(chunks=2, pause=1.5, length=5000)})
    with pytest.raises(TransientJobError) as info:
        run_download({"url": s.url("/stall")})
    assert info.value.code == "TIMEOUT"
    assert files(run_download.ctx) == ([], [])


def test_truncated_body_is_a_transient_network_error(server, run_download):
    s = server({"/short": lambda h: send(h, 200, b"x" * 500, {"Content-Length": "1000"}, length=False)})
    with pytest.raises(TransientJobError) as info:
        run_download({"url": s.url("/short")})
    assert info.value.code == "NETWORK_ERROR"
    assert files(run_download.ctx) == ([], [])


def test_server_error_then_success_on_the_next_attempt(server, run_download):
    answers = iter([500, 200])
    s = server({"/flaky": lambda h: send(h, next(answers), b"payload")})
    with pytest.raises(TransientJobError) as info:
        run_download({"url": s.url("/flaky")}, attempt=1)
    assert info.value.code == "UPSTREAM_ERROR"
    assert info.value.details["http_status"] == 500
    result = run_download({"url": s.url("/flaky")}, attempt=2)
    assert result["size"] == len(b"payload")


@pytest.mark.parametrize("status,error,code", [
    (404, JobFailed, "UPSTREAM_CLIENT_ERROR"), (403, JobFailed, "UPSTREAM_CLIENT_ERROR"),
    (429, TransientJobError, "UPSTREAM_ERROR"), (503, TransientJobError, "UPSTREAM_ERROR"),
    (304, JobFailed, "UPSTREAM_UNEXPECTED_STATUS"),
])
def test_http_error_statuses(server, run_download, status, error, code):
    s = server({"/x": lambda h: send(h, status, b"" if status == 304 else b"error page")})
    with pytest.raises(JobFailed) as info:
        run_download({"url": s.url("/x")})
    assert type(info.value) is error
    assert (info.value.code, info.value.details["http_status"]) == (code, status)
    assert files(run_download.ctx) == ([], [])


def test_oversize_declared_length_fails_before_reading(server, run_download):
    s = server({"/big": drip(chunks=3, pause=0, length=MAX_BYTES + 1)})
    with pytest.raises(JobFailed) as info:
        run_download({"url": s.url("/big")})
    assert info.value.code == "FILE_TOO_LARGE"
    assert info.value.details["size"] == MAX_BYTES + 1
    assert files(run_download.ctx) == ([], [])


def test_oversize_without_length_fails_while_streaming(server, run_download):
    s = server({"/big": drip(chunks=150, pause=0)})  # 150,000 bytes, no Content-Length
    with pytest.raises(JobFailed) as info:
        run_download({"url": s.url("/big")})
    assert info.value.code == "FILE_TOO_LARGE"
    assert files(run_download.ctx) == ([], [])


def test_size_cap_counts_decoded_bytes_of_a_compressed_body(server, run_download):
    bomb = gzip.compress(b"\0" * (20 * MAX_BYTES))  # a few hundred bytes on the wire
    s = server({"/bomb": lambda h: send(h, 200, bomb, {"Content-Encoding": "gzip"})})
    with pytest.raises(JobFailed) as info:
        run_download({"url": s.url("/bomb")})
    assert info.value.code == "FILE_TOO_LARGE"
    assert s.last_headers["Accept-Encoding"] == "identity"
    assert files(run_download.ctx) == ([], [])


def test_wrong_sha256_fails_and_right_one_passes(server, run_download):
    s = server({"/f": lambda h: send(h, 200, BODY)})
    with pytest.raises(JobFailed) as info:
        run_download({"url": s.url("/f"), "sha256": "0" * 64})
    assert info.value.code == "CHECKSUM_MISMATCH"
    assert info.value.details["actual"] == hashlib.sha256(BODY).hexdigest()
    assert files(run_download.ctx) == ([], [])
    result = run_download({"url": s.url("/f"), "sha256": hashlib.sha256(BODY).hexdigest().upper()}, attempt=2)
    assert result["size"] == len(BODY)


def test_cancel_mid_stream(server, run_download):
    s = server({"/long": drip(chunks=200, pause=0.02)})

    def cancel_soon(ctx):
        threading.Timer(0.3, ctx.request_stop, args=("cancel",)).start()
    started = time.monotonic()
    with pytest.raises(JobCancelled):
        run_download({"url": s.url("/long")}, on_context=cancel_soon)
    # Checked on every piece that arrives, not once per 64 KiB buffered.
    assert time.monotonic() - started < 1.0
    assert files(run_download.ctx) == ([], [])


def test_private_url_refused_at_run_time_without_a_request(server, run_download):
    # As if the setting changed between submission and run: run() checks again itself.
    s = server({"/": lambda h: send(h, 200, b"secret")})
    with pytest.raises(JobFailed) as info:
        run_download({"url": s.url("/")}, config={"DOWNLOAD_ALLOW_PRIVATE_URLS": False}, validate=False)
    assert info.value.code == "URL_NOT_ALLOWED"
    assert s.paths == []


def test_connection_refused_is_a_transient_network_error(run_download):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransientJobError) as info:
        run_download({"url": f"http://127.0.0.1:{port}/f"})
    assert info.value.code == "NETWORK_ERROR"
