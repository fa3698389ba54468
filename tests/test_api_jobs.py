"""The jobs API as a client sees it: envelope, lists, idempotency, retry/delete, files, bounds."""
from __future__ import annotations

import hashlib

import pytest

from tests.conftest import sign_up


def test_submit_answers_202_with_the_job_shape(admin):
    resp = admin.submit("sleep", {"duration": 0})
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["success"] is True and body["message"]
    job = body["data"]
    for field in ("id", "kind", "status", "progress", "message", "position", "eta_seconds", "attempt",
                  "created_at", "started_at", "finished_at", "result", "error", "files"):
        assert field in job
    assert resp.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["position"] == 1 and job["eta_seconds"] > 0


def test_list_paginates_and_filters(admin, dispatcher):
    ids = [admin.submit("sleep", {"duration": 0}).get_json()["data"]["id"] for _ in range(5)]
    failed = admin.submit("sleep", {"duration": 0, "fail": "permanent"}).get_json()["data"]["id"]
    for i in ids + [failed]:
        admin.wait(i)
    page1 = admin.get("/api/v1/jobs?page=1&page_size=4").get_json()["data"]
    page2 = admin.get("/api/v1/jobs?page=2&page_size=4").get_json()["data"]
    assert (page1["total"], page1["total_pages"], len(page1["items"]), len(page2["items"])) == (6, 2, 4, 2)
    listed = [j["id"] for j in page1["items"] + page2["items"]]
    assert sorted(listed) == sorted(ids + [failed])
    assert listed[0] == failed  # newest first
    only_failed = admin.get("/api/v1/jobs?status=failed").get_json()["data"]
    assert [j["id"] for j in only_failed["items"]] == [failed]
    assert admin.get("/api/v1/jobs?kind=download").get_json()["data"]["total"] == 0


def test_idempotency_key_returns_the_same_job(admin):
    first = admin.submit("sleep", {"duration": 0}, headers={"Idempotency-Key": "abc"})
    again = admin.submit("sleep", {"duration": 0}, headers={"Idempotency-Key": "abc"})
    other = admin.submit("sleep", {"duration": 0}, headers={"Idempotency-Key": "xyz"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["data"]["id"] == first.get_json()["data"]["id"]
    assert other.get_json()["data"]["id"] != first.get_json()["data"]["id"]
    assert admin.get("/api/v1/jobs").get_json()["data"]["total"] == 2


def test_retry_a_failed_job_and_delete_removes_files(app, admin, dispatcher):
    job = admin.submit("sleep", {"duration": 0, "fail": "permanent"}).get_json()["data"]
    assert admin.wait(job["id"])["status"] == "failed"
    retried = admin.post(f"/api/v1/jobs/{job['id']}/retry")
    assert retried.status_code == 202 and retried.get_json()["data"]["status"] == "queued"
    assert admin.wait(job["id"])["status"] == "failed"
    ok = admin.submit("sleep", {"duration": 0, "write_file": True}).get_json()["data"]
    assert admin.wait(ok["id"])["status"] == "succeeded"
    again = admin.post(f"/api/v1/jobs/{ok['id']}/retry")
    assert again.status_code == 409 and again.get_json()["error_code"] == "INVALID_STATE"
    folder = app.extensions["ilgun"].workspace.job_dir(ok["owner_id"], ok["id"])
    assert (folder / "out" / "sleep.txt").is_file()
    assert admin.delete(f"/api/v1/jobs/{ok['id']}").status_code == 200
    assert not folder.exists()
    assert admin.get(f"/api/v1/jobs/{ok['id']}").status_code == 404


def test_running_job_cannot_be_deleted(admin, dispatcher):
    job = admin.submit("sleep", {"duration": 10}).get_json()["data"]
    admin.wait(job["id"], until=("running",))
    resp = admin.delete(f"/api/v1/jobs/{job['id']}")
    assert resp.status_code == 409 and resp.get_json()["error_code"] == "INVALID_STATE"
    admin.post(f"/api/v1/jobs/{job['id']}/cancel")


@pytest.fixture
def finished_file(admin, dispatcher):
    job = admin.submit("sleep", {"duration": 0, "write_file": True}).get_json()["data"]
    done = admin.wait(job["id"])
    return done, f"/api/v1/jobs/{job['id']}/files/sleep.txt"


def test_files_list_and_download_with_checksum(admin, finished_file):
    job, url = finished_file
    listing = admin.get(f"/api/v1/jobs/{job['id']}/files").get_json()["data"]
    assert [f["name"] for f in listing] == ["sleep.txt"]
    body = admin.get(url)
    assert body.status_code == 200
    assert hashlib.sha256(body.data).hexdigest() == listing[0]["sha256"]
    assert listing[0]["size"] == len(body.data)
    assert "attachment" in body.headers["Content-Disposition"]


def test_file_range_requests(admin, finished_file):
    _, url = finished_file
    full = admin.get(url).data
    part = admin.get(url, headers={"Range": "bytes=2-5"})
    assert part.status_code == 206 and part.data == full[2:6]
    assert part.headers["Content-Range"] == f"bytes 2-5/{len(full)}"
    tail = admin.get(url, headers={"Range": "bytes=-3"})
    assert tail.status_code == 206 and tail.data == full[-3:]
    bad = admin.get(url, headers={"Range": f"bytes={len(full) + 10}-"})
    assert bad.status_code == 416 and bad.headers["Content-Range"] == f"bytes */{len(full)}"


def test_file_conditional_requests(admin, finished_file):
    _, url = finished_file
    first = admin.get(url)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert admin.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert admin.get(url, headers={"If-Modified-Since": modified}).status_code == 304
    assert admin.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_unknown_file_is_404(admin, finished_file):
    job, _ = finished_file
    resp = admin.get(f"/api/v1/jobs/{job['id']}/files/nothing.txt")
    assert resp.status_code == 404 and resp.get_json()["error_code"] == "FILE_NOT_FOUND"


def test_per_user_queue_bound_is_429_with_retry_after(app_factory):
    app = app_factory(MAX_QUEUED_PER_USER=2, QUEUE_RETRY_AFTER=9)
    admin = sign_up(app, app.test_client(), "admin", role="admin")
    for _ in range(2):
        assert admin.submit("sleep", {"duration": 0}).status_code == 202
    resp = admin.submit("sleep", {"duration": 0})
    assert resp.status_code == 429 and resp.get_json()["error_code"] == "QUEUE_FULL"
    assert resp.headers["Retry-After"] == "9"


def test_global_queue_bound_is_503_with_retry_after(app_factory):
    app = app_factory(MAX_QUEUED_TOTAL=1, SLEEP_KIND_FOR_EVERYONE=True)
    client = app.test_client()
    a, b = sign_up(app, client, "alice"), sign_up(app, client, "bob")
    assert a.submit("sleep", {"duration": 0}).status_code == 202
    resp = b.submit("sleep", {"duration": 0})
    assert resp.status_code == 503 and resp.get_json()["error_code"] == "SERVICE_BUSY"
    assert int(resp.headers["Retry-After"]) > 0


def test_stats_per_user_and_global(app_factory):
    app = app_factory(SLEEP_KIND_FOR_EVERYONE=True)
    client = app.test_client()
    admin, alice = sign_up(app, client, "admin", role="admin"), sign_up(app, client, "alice")
    alice.submit("sleep", {"duration": 0})
    admin.submit("sleep", {"duration": 0})
    mine = alice.get("/api/v1/stats").get_json()["data"]
    assert mine["scope"] == "user" and mine["jobs_by_status"] == {"queued": 1} and "workers" not in mine
    everyone = admin.get("/api/v1/stats").get_json()["data"]
    assert everyone["scope"] == "global" and everyone["jobs_by_status"] == {"queued": 2}
    assert everyone["users"]["total"] == 2


def test_health_and_readiness(client, app):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.get_json()["data"]["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["data"]["status"] == "ready"


def test_readiness_fails_on_an_unmigrated_database(app_factory, tmp_path):
    empty = tmp_path / "empty.db"
    app = app_factory(DATABASE_URL=f"sqlite:///{empty}")
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["error_code"] == "NOT_READY"


def test_refuse_mode_limit_answers_409_until_the_first_job_ends(app_factory):
    app = app_factory(KIND_LIMITS={"sleep": {"per_user": 1, "over_limit": "refuse"}},
                      SLEEP_KIND_FOR_EVERYONE=True)
    client = app.test_client()
    alice, bob = sign_up(app, client, "alice"), sign_up(app, client, "bob")
    first = alice.submit("sleep", {"duration": 0}).get_json()["data"]
    refused = alice.submit("sleep", {"duration": 0})
    assert refused.status_code == 409
    assert refused.get_json()["error_code"] == "CONCURRENCY_LIMIT"
    assert bob.submit("sleep", {"duration": 0}).status_code == 202  # other users are not affected
    alice.post(f"/api/v1/jobs/{first['id']}/cancel")
    assert alice.submit("sleep", {"duration": 0}).status_code == 202
