"""Uploads: POST /api/v1/files and the file's lifecycle; the type is decided by content."""
from __future__ import annotations

import hashlib
import io
import random
import zipfile

import pytest
from openpyxl import Workbook
from PIL import Image

from service.filetypes import sniff
from tests.conftest import assert_error, assert_ok, sign_up


def _png(size=(40, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "white").save(buf, "PNG")
    return buf.getvalue()


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, fmt)
    return buf.getvalue()


def _xlsx() -> bytes:
    wb = Workbook()
    wb.active.append(["a", 1])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def _upload(api, data: bytes, name: str = "scan.png", field: str = "file"):
    return api.client.post("/api/v1/files", data={field: (io.BytesIO(data), name)},
                           headers=api.headers(), content_type="multipart/form-data")


def _incoming(app):
    folder = app.extensions["ilgun"].workspace.incoming_dir()
    return sorted(folder.iterdir()) if folder.exists() else []


def test_upload_read_download_list_and_delete(app, alice):
    data = _png()
    resp = _upload(alice, data, "scan.png")
    saved = assert_ok(resp, 201)
    assert resp.headers["Location"] == f"/api/v1/files/{saved['id']}"
    assert saved["name"] == "scan.png" and saved["size"] == len(data)
    assert saved["sha256"] == hashlib.sha256(data).hexdigest()
    assert saved["content_type"] == "image/png" and saved["file_type"] == "png"
    assert assert_ok(alice.get(f"/api/v1/files/{saved['id']}")) == saved
    body = alice.get(f"/api/v1/files/{saved['id']}/content")
    assert body.status_code == 200 and body.data == data
    assert body.headers["Content-Type"] == "image/png" and body.headers["X-Content-Type-Options"] == "nosniff"
    assert "attachment" in body.headers["Content-Disposition"]
    again = alice.get(f"/api/v1/files/{saved['id']}/content", headers={"If-None-Match": body.headers["ETag"]})
    assert again.status_code == 304
    listing = assert_ok(alice.get("/api/v1/files"))
    assert [f["id"] for f in listing["items"]] == [saved["id"]] and listing["total"] == 1
    path = app.extensions["ilgun"].workspace.upload_path(saved_owner(app, "alice"), saved["id"])
    assert path.read_bytes() == data
    assert _incoming(app) == []  # the temporary name went with the request
    assert_ok(alice.delete(f"/api/v1/files/{saved['id']}"))
    assert not path.exists()
    assert_error(alice.get(f"/api/v1/files/{saved['id']}"), 404, "FILE_NOT_FOUND")


def saved_owner(app, username: str) -> int:
    return app.extensions["ilgun"].users.by_username(username)["id"]


@pytest.mark.parametrize("fmt,file_type", [("PNG", "png"), ("JPEG", "jpeg"), ("TIFF", "tiff"), ("WEBP", "webp"),
                                           ("BMP", "bmp")])
def test_every_image_type_is_recognised_by_content(alice, fmt, file_type):
    saved = assert_ok(_upload(alice, _image(fmt), "image"), 201)
    assert saved["file_type"] == file_type
    assert saved["name"].endswith({"jpeg": ".jpg", "tiff": ".tif"}.get(file_type, f".{file_type}"))  # named by type


def test_the_content_decides_the_type_not_the_name(alice):
    assert assert_ok(_upload(alice, PDF, "holiday.png"), 201)["file_type"] == "pdf"
    assert assert_ok(_upload(alice, _xlsx(), "report.pdf"), 201)["file_type"] == "xlsx"
    assert assert_ok(_upload(alice, _png(), "sheet.xlsx"), 201)["content_type"] == "image/png"
    for data, name in ((b"just some text\n", "notes.png"), (b"GIF89a" + b"\0" * 20, "anim.gif"),
                       (b"MZ" + b"\0" * 100, "tool.pdf")):
        assert_error(_upload(alice, data, name), 415, "UNSUPPORTED_FILE_TYPE")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "a zip, not a workbook")
    assert_error(_upload(alice, buf.getvalue(), "book.xlsx"), 415, "UNSUPPORTED_FILE_TYPE")
    assert_ok(alice.get("/api/v1/files"))["total"] == 3


def test_empty_missing_and_non_multipart_uploads_are_refused(app, alice):
    assert_error(_upload(alice, b"", "empty.png"), 400, "FILE_EMPTY")
    assert_error(_upload(alice, _png(), "scan.png", field="document"), 400, "FILE_REQUIRED")
    assert_error(alice.post("/api/v1/files", json={"file": "x"}), 400, "UNSUPPORTED_MEDIA_TYPE")
    assert assert_ok(alice.get("/api/v1/files"))["total"] == 0
    assert _incoming(app) == []
    assert alice.client.post("/api/v1/files", data={"file": (io.BytesIO(_png()), "a.png")}).status_code == 401


def test_an_oversize_upload_is_refused_and_leaves_nothing(app_factory):
    app = app_factory(MAX_CONTENT_LENGTH=4096)
    alice = sign_up(app, app.test_client(), "alice")
    assert_error(_upload(alice, b"\x89PNG\r\n\x1a\n" + b"\0" * 10_000, "big.png"), 413, "PAYLOAD_TOO_LARGE")
    assert assert_ok(alice.get("/api/v1/files"))["total"] == 0
    assert _incoming(app) == []
    assert not (app.extensions["ilgun"].workspace.user_dir(saved_owner(app, "alice")) / "uploads").exists()


def test_the_disk_quota_is_enforced(app_factory):
    app = app_factory(USER_DISK_QUOTA_BYTES=1000)
    alice = sign_up(app, app.test_client(), "alice")
    small = _png((4, 4))
    assert len(small) < 500
    assert_ok(_upload(alice, small, "a.png"), 201)
    noise = io.BytesIO()
    Image.frombytes("RGB", (30, 30), random.Random(1).randbytes(30 * 30 * 3)).save(noise, "PNG")
    assert len(small) + len(noise.getvalue()) > 1000
    assert_error(_upload(alice, noise.getvalue(), "b.png"), 413, "QUOTA_EXCEEDED")
    assert assert_ok(alice.get("/api/v1/files"))["total"] == 1


@pytest.mark.parametrize("name,stored", [("../../etc/passwd.png", "passwd.png"), ("..\\..\\win.ini.png", "win.ini.png"),
                                         ("/abs/path/x.png", "x.png"), ("con.png", "_con.png"),
                                         ("a\x01b\tc.png", "a_b_c.png"), ("..", "upload.png"), ("", "upload.png")])
def test_path_traversal_in_the_file_name_stays_in_the_workspace(app, alice, name, stored):
    saved = assert_ok(_upload(alice, _png(), name), 201)
    assert saved["name"] == stored
    path = app.extensions["ilgun"].workspace.upload_path(saved_owner(app, "alice"), saved["id"])
    assert path.is_file() and path.parent.name == "uploads"


def test_another_users_file_is_not_found_and_ids_are_not_paths(alice, bob, admin):
    saved = assert_ok(_upload(alice, _png()), 201)
    for path in (f"/api/v1/files/{saved['id']}", f"/api/v1/files/{saved['id']}/content"):
        assert_error(bob.get(path), 404, "FILE_NOT_FOUND")
    assert_error(bob.delete(f"/api/v1/files/{saved['id']}"), 404, "FILE_NOT_FOUND")
    assert assert_ok(bob.get("/api/v1/files"))["total"] == 0
    assert assert_ok(admin.get(f"/api/v1/files/{saved['id']}"))["id"] == saved["id"]  # admins see all
    for bad in ("..%2F..%2Fetc%2Fpasswd", "not-an-id", "%2e%2e"):
        assert alice.get(f"/api/v1/files/{bad}/content").status_code == 404
    assert assert_ok(alice.get(f"/api/v1/files/{saved['id']}"))["id"] == saved["id"]


def test_a_multipart_submit_that_is_refused_keeps_no_file(alice):
    resp = alice.client.post("/api/v1/jobs", data={"kind": "download", "params": '{"url": "https://example.com/"}',
                                                   "file": (io.BytesIO(_png()), "scan.png")},
                             headers=alice.headers(), content_type="multipart/form-data")
    assert_error(resp, 400, "VALIDATION_ERROR")  # download takes no file
    assert assert_ok(alice.get("/api/v1/files"))["total"] == 0
    resp = alice.client.post("/api/v1/jobs", data={"kind": "download", "params": "{not json",
                                                   "file": (io.BytesIO(_png()), "scan.png")},
                             headers=alice.headers(), content_type="multipart/form-data")
    assert_error(resp, 400, "INVALID_JSON")
    assert assert_ok(alice.get("/api/v1/files"))["total"] == 0


def test_sniff_reads_only_the_content(tmp_path):
    cases = {"a.png": _png(), "b.bin": PDF, "c.png": _xlsx(), "d.txt": b"hello", "e.pdf": b"", "f.xlsx": b"PK\x03\x04junk"}
    found = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        found[name] = sniff(tmp_path / name)
    assert found == {"a.png": "png", "b.bin": "pdf", "c.png": "xlsx", "d.txt": None, "e.pdf": None, "f.xlsx": None}
