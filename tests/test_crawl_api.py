"""The crawl kind through the API and the engine: one active crawl per user (409
CRAWL_ALREADY_RUNNING, other users unaffected), progress while it runs, a cancel that keeps the
pages so far, and the params schema matching validation."""
from __future__ import annotations

import json

import pytest
from openapi_schema_validator import OAS30Validator

from tests.conftest import assert_error, assert_ok
from tests.crawl_site import CrawlSite, content_pages


@pytest.fixture
def site():
    s = CrawlSite()
    yield s
    s.close()


def _slow(site, **extra):
    # about 5 pages a second: long enough to watch, cancel and race against
    return {"url": site.url("/"), "max_depth": 3, "delay": 0.2, **extra}


def test_one_active_crawl_per_user_others_unaffected(app, alice, bob, dispatcher, site):
    first = assert_ok(alice.submit("crawl", _slow(site)), 202)
    body = assert_error(alice.submit("crawl", _slow(site)), 409, "CRAWL_ALREADY_RUNNING")
    assert "already running" in body["message"] and body["details"]["limit"] == 1
    theirs = assert_ok(bob.submit("crawl", _slow(site)), 202)  # another user's crawl starts
    assert alice.wait(first["id"], until=("running",))["status"] == "running"
    assert bob.wait(theirs["id"], until=("running",))["status"] == "running"
    assert_ok(alice.post(f"/api/v1/jobs/{first['id']}/cancel"))
    alice.wait(first["id"])
    again = assert_ok(alice.submit("crawl", {"url": site.url("/section/1/"), "max_depth": 0, "delay": 0}), 202)
    assert alice.wait(again["id"])["status"] == "succeeded"  # ended: the next one is accepted
    assert_ok(bob.post(f"/api/v1/jobs/{theirs['id']}/cancel"))


def test_progress_then_cancel_keeps_partial_files(app, alice, dispatcher, site):
    job = assert_ok(alice.submit("crawl", _slow(site)), 202)
    seen = alice.wait(job["id"], until=("running",))
    for _ in range(100):
        seen = alice.get(f"/api/v1/jobs/{job['id']}").get_json()["data"]
        if seen["message"] and " pages (depth" in seen["message"] and seen["progress"] > 0:
            break
        import time
        time.sleep(0.1)
    assert " ok, " in seen["message"] and "blocked by robots.txt" in seen["message"], seen
    assert_ok(alice.post(f"/api/v1/jobs/{job['id']}/cancel"))
    done = alice.wait(job["id"])
    assert done["status"] == "cancelled" and done["result"]["partial"] is True
    names = {f["name"] for f in done["files"]}
    assert names == {"pages.jsonl", "pages.csv"}
    resp = alice.get(f"/api/v1/jobs/{job['id']}/files/pages.jsonl")
    assert resp.status_code == 200
    records = [json.loads(line) for line in resp.data.decode().splitlines()]
    assert len(records) == done["result"]["pages"] > 0 and len(records) < len(content_pages())


def test_a_finished_crawl_result_and_files(app, alice, dispatcher, site):
    job = assert_ok(alice.submit("crawl", {"url": site.url("/section/2/"), "max_depth": 1, "delay": 0,
                                           "extract": {"sku": "span.price@data-sku"}}), 202)
    done = alice.wait(job["id"], timeout=30)
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["pages"] == 22 and result["ok"] == 22 and result["partial"] is False  # index, 20 pages, home
    assert done["progress"] == 100
    csv_text = alice.get(f"/api/v1/jobs/{job['id']}/files/pages.csv").data.decode()
    assert "SKU-2-7" in csv_text


@pytest.mark.parametrize("params,accepted", [
    ({"url": "http://127.0.0.1:9/"}, True),
    ({"urls": ["http://127.0.0.1:9/", "http://127.0.0.1:9/b"], "max_pages": 10, "max_depth": 0}, True),
    ({"url": "http://127.0.0.1:9/", "extract": {"t": "h1", "all": {"selector": "a@href", "all": True}},
      "include": ["/docs/"], "exclude": ["\\.pdf$"], "allowed_domains": ["example.org"],
      "respect_robots": False, "delay": 0.5, "concurrency": 2}, True),
    ({}, False), ({"url": 5}, False), ({"url": "ftp://x.org/"}, False), ({"urls": []}, False),
    ({"url": "http://x.org/", "max_pages": 0}, False), ({"url": "http://x.org/", "delay": 61}, False),
    ({"url": "http://x.org/", "extract": {"t": {"selector": "h1", "first": True}}}, False),
    ({"url": "http://x.org/", "other": 1}, False), ({"url": "http://x.org/", "respect_robots": 1}, False),
])
def test_crawl_params_schema_matches_validation(app, client, alice, params, accepted):
    doc = client.get("/api/v1/openapi.json").get_json()
    schema = doc["components"]["schemas"]["SubmitJob"]
    schema_ok = OAS30Validator({**schema, "components": doc["components"]}).is_valid({"kind": "crawl", "params": params})
    resp = alice.submit("crawl", params)
    assert (resp.status_code == 202, schema_ok) == (accepted, accepted), resp.get_json()
    if accepted:
        assert_ok(alice.post(f"/api/v1/jobs/{resp.get_json()['data']['id']}/cancel"))
