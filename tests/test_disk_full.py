"""A full disk: FILES_ROOT on a real, small tmpfs (the database stays on the normal disk).

A job that fills it fails DISK_FULL (not retried, not hidden behind NETWORK_ERROR or
INTERNAL_ERROR) with no partial file left; an upload that fills it answers 507 DISK_FULL keeping
nothing; the service keeps working once space is free, and the database agrees with the disk.

Mounting needs root (CI runs as root): elsewhere these tests skip, under CI=true they fail.
"""
from __future__ import annotations

import errno
import io
import os
import sqlite3
import subprocess
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.conftest import assert_error, assert_ok, sign_up
from tests.integration.gunicorn_harness import LoopbackHTTPServer
from tests.test_openapi import Conformance

TMPFS_BYTES = 2 * 1024 * 1024
BIG = 4 * 1024 * 1024                   # more than the whole tmpfs
SMALL = b"ilgun " * 2_000               # 12,000 bytes
PAGE = b"<!DOCTYPE html><html><head><title>One page</title></head><body><h1>Hello</h1></body></html>"
SLACK = 64 * 1024                       # free space directories and empty lock files may take


@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "files"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=30)
        problem = None if done.returncode == 0 else (done.stderr.strip() or f"exit status {done.returncode}")
    except (OSError, subprocess.SubprocessError) as exc:
        problem = str(exc)
    if problem:
        reason = f"cannot mount a tmpfs for the full-disk tests (root is needed): {problem}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: these tests must run, not skip)")
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


class Origin(LoopbackHTTPServer):
    """127.0.0.1: /big (larger than the tmpfs), /small, /page.html."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/big":
                    self._send(b"\0" * BIG, "application/octet-stream")
                elif self.path == "/page.html":
                    self._send(PAGE, "text/html; charset=utf-8")
                else:
                    self._send(SMALL, "application/octet-stream")

            def _send(self, body: bytes, ctype: str):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: its disk is full
                    pass

            def log_message(self, *args):
                pass

        super().__init__(Handler, name="disk-full-origin")
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()


@pytest.fixture
def origin():
    server = Origin()
    yield server
    server.stop()


@pytest.fixture
def service(tmpfs, app_factory):
    """(app, files root) with FILES_ROOT on the tmpfs and a dispatcher in this process."""
    from service.runtime import start_worker_runtime
    app = app_factory(FILES_ROOT=str(tmpfs), MAX_WORKERS=1)
    start_worker_runtime(app, label="test")
    return app, tmpfs


# -- helpers ---------------------------------------------------------------------------------
def free_bytes(root: Path) -> int:
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize


def files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def leftovers(root: Path, before: dict[str, int]) -> list[str]:
    """Files there now that were not before, other than the empty lock files the engine keeps."""
    return sorted(name for name, size in files_under(root).items()
                  if name not in before and not (name.startswith("locks/") and size == 0))


def fill(root: Path) -> Path:
    """A ballast file taking every free byte of the tmpfs."""
    ballast = root / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        for size in (65536, 1):  # then byte by byte: not even a part of a page may stay free
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    assert free_bytes(root) == 0
    return ballast


def assert_disk_full(job: dict, owner_id: int, root: Path) -> None:
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "DISK_FULL", job["error"]
    assert job["error"]["message"].startswith("The file store is full"), job["error"]
    assert job["attempt"] == 1, "a full disk is not retried"
    assert job["files"] == []
    assert not (root / "users" / str(owner_id) / "jobs" / job["id"]).exists(), "the job's folder (out/, tmp/) is gone"


def assert_consistent(app, root: Path) -> None:
    """SQLite is intact, every job ended, and rows and files agree: a succeeded job's files are
    on disk as recorded, a failed one has no folder; every upload row has its file and no
    upload file is without a row; nothing is left in incoming/."""
    db = Path(app.config["DATABASE_URL"].removeprefix("sqlite:///"))
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        recorded: dict[str, dict[str, int]] = {}
        for job_id, name, size in con.execute("SELECT job_id, name, size FROM job_files"):
            recorded.setdefault(job_id, {})[name] = size
        for job_id, owner, status, code in con.execute("SELECT id, owner_id, status, error_code FROM jobs"):
            folder = root / "users" / str(owner) / "jobs" / job_id
            out = folder / "out"
            on_disk = {p.name: p.stat().st_size for p in out.iterdir()} if out.is_dir() else {}
            assert status in ("succeeded", "failed"), (job_id, status)
            assert on_disk == recorded.get(job_id, {}), (job_id, status, code)
            assert not (folder / "tmp").exists(), (job_id, "temporary files left")
            if status == "failed":
                assert not folder.exists() and job_id not in recorded, (job_id, code)
        uploads = {(str(owner), file_id): size for file_id, owner, size in
                   con.execute("SELECT id, owner_id, size FROM uploads")}
    finally:
        con.close()
    stored = {(p.parent.parent.name, p.name): p.stat().st_size for p in root.glob("users/*/uploads/*")}
    assert stored == uploads
    assert not (root / "incoming").exists() or not any((root / "incoming").iterdir())


def png(extra: int = 0) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    return buf.getvalue() + os.urandom(extra)  # bytes after IEND: still sniffed as a PNG


# -- jobs ------------------------------------------------------------------------------------
def test_a_download_larger_than_the_disk_fails_disk_full_and_leaves_nothing(service, origin):
    app, root = service
    alice = sign_up(app, app.test_client(), "alice")
    owner = app.extensions["ilgun"].users.by_username("alice")["id"]
    before, free = files_under(root), free_bytes(root)

    job = assert_ok(alice.submit("download", {"url": f"{origin.url}/big"}), 202)
    done = alice.wait(job["id"], timeout=30)
    assert_disk_full(done, owner, root)
    assert leftovers(root, before) == []
    assert free_bytes(root) >= free - SLACK, "no partial file is still taking space (open or not)"
    assert assert_ok(alice.get(f"/api/v1/jobs/{job['id']}/files")) == []

    # the service keeps working: the next download fits and succeeds
    small = assert_ok(alice.submit("download", {"url": f"{origin.url}/small"}), 202)
    ok = alice.wait(small["id"], timeout=30)
    assert ok["status"] == "succeeded", ok
    assert [f["name"] for f in ok["files"]] == ["small"] and ok["files"][0]["size"] == len(SMALL)
    assert alice.get(f"/api/v1/jobs/{small['id']}/files/small").data == SMALL
    assert_consistent(app, root)


def test_a_kind_writing_its_output_to_a_full_disk_fails_disk_full(service):
    app, root = service
    admin = sign_up(app, app.test_client(), "admin", role="admin")
    owner = app.extensions["ilgun"].users.by_username("admin")["id"]
    ballast = fill(root)
    before = files_under(root)

    job = assert_ok(admin.submit("sleep", {"duration": 0, "steps": 1, "write_file": True}), 202)
    done = admin.wait(job["id"], timeout=30)
    assert_disk_full(done, owner, root)
    assert leftovers(root, before) == []

    ballast.unlink()
    again = assert_ok(admin.submit("sleep", {"duration": 0, "steps": 1, "write_file": True}), 202)
    ok = admin.wait(again["id"], timeout=30)
    assert ok["status"] == "succeeded" and [f["name"] for f in ok["files"]] == ["sleep.txt"], ok
    assert_consistent(app, root)


def test_a_crawl_whose_pages_do_not_fit_fails_disk_full(service, origin):
    """The crawl writes two outputs at once (pages.jsonl, pages.csv): neither is left behind."""
    app, root = service
    alice = sign_up(app, app.test_client(), "alice")
    owner = app.extensions["ilgun"].users.by_username("alice")["id"]
    ballast = fill(root)
    before = files_under(root)

    job = assert_ok(alice.submit("crawl", {"url": f"{origin.url}/page.html", "max_depth": 0, "delay": 0,
                                           "respect_robots": False}), 202)
    done = alice.wait(job["id"], timeout=30)
    assert_disk_full(done, owner, root)
    assert leftovers(root, before) == []
    ballast.unlink()
    assert free_bytes(root) >= TMPFS_BYTES - SLACK, "no output is still open and taking space"
    assert_consistent(app, root)


# -- uploads ---------------------------------------------------------------------------------
def test_an_upload_larger_than_the_free_space_answers_507_and_keeps_nothing(service):
    app, root = service
    client = app.test_client()
    alice = sign_up(app, client, "alice")
    conform = Conformance(app, client.get("/api/v1/openapi.json").get_json())
    before, free = files_under(root), free_bytes(root)
    big = png(extra=free + 512 * 1024)

    resp = alice.client.post("/api/v1/files", data={"file": (io.BytesIO(big), "scan.png")},
                             headers=alice.headers(), content_type="multipart/form-data")
    assert_error(resp, 507, "DISK_FULL")
    conform(resp, "post", "/api/v1/files", 507)

    resp = alice.client.post("/api/v1/jobs", data={"kind": "report", "params": "{}",
                                                   "file": (io.BytesIO(big), "scan.png")},
                             headers=alice.headers(), content_type="multipart/form-data")
    assert_error(resp, 507, "DISK_FULL")
    conform(resp, "post", "/api/v1/jobs", 507)

    assert leftovers(root, before) == [], "no partial upload in incoming/ or the user's folder"
    assert free_bytes(root) >= free - SLACK
    assert assert_ok(alice.get("/api/v1/files"))["total"] == 0
    assert assert_ok(alice.get("/api/v1/jobs"))["total"] == 0

    small = png()
    saved = assert_ok(alice.client.post("/api/v1/files", data={"file": (io.BytesIO(small), "scan.png")},
                                        headers=alice.headers(), content_type="multipart/form-data"), 201)
    assert alice.get(f"/api/v1/files/{saved['id']}/content").data == small
    assert_consistent(app, root)


def test_disk_full_is_found_behind_a_kind_s_own_error():
    """A kind that wraps the OSError (a download's NETWORK_ERROR, retried) still ends DISK_FULL."""
    from service.engine.kind import JobFailed, TransientJobError
    from service.engine.outcomes import _run_checking_disk

    class Wrapping:
        def run(self, ctx):
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as exc:
                raise TransientJobError("NETWORK_ERROR", f"Network error: {exc}") from exc

    class Ctx:
        job_id, kind = "j", "wrapping"

    with pytest.raises(JobFailed) as caught:
        _run_checking_disk(Wrapping(), Ctx())
    assert caught.value.code == "DISK_FULL" and not isinstance(caught.value, TransientJobError)


def test_outputs_closed_on_a_full_disk_leave_no_partial_file(tmpfs):
    """Closing an output flushes its buffer, which is where a small write meets the full disk:
    the partial file goes then too, and a crawl's second output is closed (not left open,
    holding its space) when closing the first one failed."""
    from service.crawl.outputs import PageWriter
    from service.engine.context import RunContext

    job = {"id": "00000000-0000-4000-8000-000000000001", "owner_id": 1, "kind": "test", "params": {},
           "attempt": 1, "run_token": "t"}
    ctx = RunContext(job, {}, lambda: (tmpfs / "out", tmpfs / "tmp"), lambda *args: True)
    ctx.workspace, ctx.tmp_dir  # the folders exist before the disk fills
    ballast = fill(tmpfs)
    with pytest.raises(OSError) as caught:
        with ctx.open_output("small.txt", "w") as out:
            out.write("a few bytes, buffered until the close")
    assert caught.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        with PageWriter(ctx, []) as writer:
            writer.write({"url": "http://127.0.0.1/", "status": 200})
    assert writer._csv_file.closed and writer._jsonl.closed
    assert sorted(files_under(tmpfs)) == ["ballast"]
    ballast.unlink()
    assert free_bytes(tmpfs) >= TMPFS_BYTES - SLACK


def test_a_database_on_a_full_disk_answers_507_loses_nothing_and_recovers(tmpfs, migrated_db):
    """The database itself on the full disk (not only FILES_ROOT): SQLite's "database or disk is
    full" reaches the client as 507 DISK_FULL, not a 500; every job accepted before is there, none
    that was refused; once space is free, submitting works again and the file is intact."""
    from tests.conftest import make_app
    app = make_app(tmpfs, migrated_db, SLEEP_KIND_FOR_EVERYONE=True)
    client = app.test_client()
    alice = sign_up(app, client, "alice")
    conform = Conformance(app, client.get("/api/v1/openapi.json").get_json())
    filler = tmpfs / "filler"
    with open(filler, "wb") as f:
        with pytest.raises(OSError) as full_disk:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    assert full_disk.value.errno == errno.ENOSPC
    os.truncate(filler, filler.stat().st_size - 96 * 1024)   # room for some jobs, not many

    accepted, refused = [], None
    for _ in range(3000):
        resp = alice.submit("sleep", {"duration": 0})
        if resp.status_code != 202:
            refused = resp
            break
        accepted.append(resp.get_json()["data"]["id"])
    assert refused is not None, "the database's disk never filled"
    body = assert_error(refused, 507, "DISK_FULL")
    assert "database" in body["message"]
    conform(refused, "post", "/api/v1/jobs", 507)
    assert accepted, "no job fitted before the disk was full"

    filler.unlink()
    after = alice.submit("sleep", {"duration": 0})
    assert after.status_code == 202, after.get_json()
    listed = assert_ok(alice.get("/api/v1/jobs?page_size=100&page=1"))
    ids = {j["id"] for j in listed["items"]}
    for page in range(2, listed["total_pages"] + 1):
        ids |= {j["id"] for j in assert_ok(alice.get(f"/api/v1/jobs?page_size=100&page={page}"))["items"]}
    assert ids == set(accepted) | {after.get_json()["data"]["id"]}
    app.extensions["ilgun"].engine.dispose()
    with sqlite3.connect(tmpfs / "ilgun.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
