"""The admin dashboard: the hourly count of finished jobs on SQLite and PostgreSQL (exact hours,
older jobs left out, served by an index), and the page an admin sees — the numbers, the chart,
the live workers — that others do not."""
from __future__ import annotations

import re
import time
import uuid
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
import sqlalchemy as sa

from service.errors import Forbidden
from service.store import database
from service.store.dashboard import DashboardStore
from service.store.schema import jobs, metadata
from service.store.users import UserStore
from tests.conftest import PASSWORD

HTML = {"Accept": "text/html"}
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
SVG = "{http://www.w3.org/2000/svg}"
H = 3600.0
NOW = 1_800_000_000.0   # a whole second: hour edges below are exact in floating point


def add_job(engine, owner_id: int, status: str, finished_at: float | None = None, kind: str = "sleep") -> str:
    job_id = str(uuid.uuid4())
    at = finished_at or time.time()
    with engine.begin() as conn:
        conn.execute(jobs.insert().values(
            id=job_id, owner_id=owner_id, kind=kind, params={}, status=status, priority=0, progress=0.0,
            attempt=1, max_attempts=3, run_after=at, cancel_requested=False, created_at=at - 5, updated_at=at,
            started_at=at - 4 if status != "queued" else None, finished_at=finished_at))
    return job_id


# -- the hourly count, on both databases -------------------------------------------------------
@pytest.fixture
def engine(postgresql_or_none, tmp_path):
    url = postgresql_or_none
    if url is None:
        url = f"sqlite:///{tmp_path / 'dashboard.db'}"
        setup = database.make_engine(url)
        metadata.create_all(setup)
        setup.dispose()
    engine = database.make_engine(url)
    yield engine
    engine.dispose()


def test_finished_jobs_are_counted_in_their_hour_and_older_ones_left_out(engine):
    owner = UserStore(engine).create("owner", "password123")["id"]
    since = NOW - 24 * H
    for _ in range(2):
        add_job(engine, owner, "succeeded", NOW - 60)               # the last hour
    add_job(engine, owner, "failed", NOW - 60, kind="download")
    add_job(engine, owner, "succeeded", NOW + 2)                    # a clock a little ahead: still now
    add_job(engine, owner, "succeeded", since + 5 * H + 1)          # just into hour 5
    add_job(engine, owner, "cancelled", since + 5 * H - 1)          # just before it: hour 4, not 5
    add_job(engine, owner, "succeeded", since + 0.5)                # the first hour
    add_job(engine, owner, "succeeded", since - 1)                  # a second too old
    add_job(engine, owner, "failed", NOW - 30 * H)                  # long ago
    add_job(engine, owner, "queued")
    add_job(engine, owner, "running")

    got = DashboardStore(engine).finished_per_hour(NOW, hours=24)

    expected = [(0, 0, 0)] * 24
    expected[0], expected[4], expected[5], expected[23] = (1, 0, 0), (0, 0, 1), (1, 0, 0), (3, 1, 0)
    assert [(h["succeeded"], h["failed"], h["cancelled"]) for h in got["hours"]] == expected
    assert got["hours"][0]["start"] == since and got["hours"][-1]["end"] == NOW
    assert all(b["start"] == a["end"] for a, b in zip(got["hours"], got["hours"][1:]))
    assert got["kinds"] == {"sleep": {"succeeded": 5, "failed": 0, "cancelled": 1},
                            "download": {"succeeded": 0, "failed": 1, "cancelled": 0}}


def test_the_hourly_count_reads_the_finished_at_index_not_the_table(engine):
    """Without ix_jobs_finished PostgreSQL scans every job, and SQLite depends on a skip-scan
    of ix_jobs_kind_finished that only some statistics allow."""
    owner = UserStore(engine).create("owner", "password123")["id"]
    kinds = ("sleep", "download", "ocr", "report", "crawl", "cefr")
    rows = [dict(id=f"{i:036d}", owner_id=owner, kind=kinds[i % 6], params={}, status="succeeded",
                 priority=0, progress=100.0, attempt=1, max_attempts=3, run_after=NOW, cancel_requested=False,
                 created_at=NOW, updated_at=NOW, finished_at=NOW - 1 - i * 240.0)
            for i in range(20_000)]  # one every 4 minutes, for 55 days
    with engine.begin() as conn:
        conn.execute(jobs.insert(), rows)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    engine.dispose()  # SQLite connections load statistics when they open
    query = DashboardStore.hourly_query(NOW - 24 * H, engine.dialect.name)
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(explain + sql))
    assert "ix_jobs_finished" in plan and "Seq Scan" not in plan and "SCAN jobs" not in plan, plan
    hours = DashboardStore(engine).finished_per_hour(NOW)["hours"]
    assert [h["succeeded"] for h in hours] == [15] * 24


# -- the page ------------------------------------------------------------------------------------
def signed_in(app, username: str, role: str = "user"):
    app.extensions["ilgun"].users.create(username, PASSWORD, role=role)
    client = app.test_client()
    token = CSRF_FIELD.search(client.get("/login", headers=HTML).get_data(as_text=True)).group(1)
    resp = client.post("/login", data={"csrf_token": token, "username": username, "password": PASSWORD},
                       headers=HTML)
    assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
    return client


class Tables(HTMLParser):
    """The text of every cell of every table with an id: {id: [[cell, ...], ...]}."""

    def __init__(self, html: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id"):
            self._table = self.tables.setdefault(dict(attrs)["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def cards(html: str) -> dict[str, str]:
    return {label.strip(): n for n, label in re.findall(r'<span class="n">([^<]+)</span>([^<]+)<', html)}


def chart_of(html: str) -> ET.Element:
    match = re.search(r'<svg class="chart hourly".*?</svg>', html, re.S)
    assert match, html[:500]
    return ET.fromstring(match.group(0))  # well-formed SVG, or this raises


def bar_groups(svg: ET.Element) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if g.get("class") == "bar-group"]


def test_an_admin_sees_users_jobs_the_last_day_and_the_live_workers(app):
    admin = signed_in(app, "admin", role="admin")
    svc = app.extensions["ilgun"]
    alice = svc.users.create("alice", PASSWORD)["id"]
    svc.users.create("bob", PASSWORD)
    engine, now = svc.engine, time.time()
    # mid-hour times, so the seconds this test takes cannot move a job to the next hour
    for _ in range(3):
        add_job(engine, alice, "succeeded", now - 0.5 * H)          # hour 23, the last
    add_job(engine, alice, "failed", now - 0.5 * H)
    for _ in range(2):
        add_job(engine, alice, "succeeded", now - 5.5 * H, kind="download")   # hour 18
    add_job(engine, alice, "cancelled", now - 10.5 * H)             # hour 13
    add_job(engine, alice, "succeeded", now - 30 * H)               # not in the last day
    add_job(engine, alice, "queued")
    add_job(engine, alice, "queued")
    running = add_job(engine, alice, "running")
    svc.workers.heartbeat("w1", "node-<b>1</b>", 4242, 3, [running])

    resp = admin.get("/admin", headers=HTML)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Traceback" not in html

    assert cards(html) == {"users": "3", "active in the last 24 h": "1", "queued": "2", "running": "1",
                           "succeeded in the last 24 h": "5", "failed in the last 24 h": "1",
                           "jobs/h finished, 24 h average": "0.3"}  # 7 finished / 24 h
    tables = Tables(html).tables
    by_kind = {row[0]: row[1:] for row in tables["jobs-by-kind"]}
    assert by_kind["Kind"] == ["Queued", "Running", "Succeeded", "Failed", "Cancelled", "Total"]
    assert by_kind["sleep"] == ["2", "1", "4", "1", "1", "9"]
    assert by_kind["download"] == ["0", "0", "2", "0", "0", "2"]
    assert by_kind["ocr"] == ["0"] * 6  # every registered kind has a row
    assert by_kind["Total"] == ["2", "1", "6", "1", "1", "11"]

    svg = chart_of(html)
    title, desc = svg.find(f"{SVG}title"), svg.find(f"{SVG}desc")
    assert svg.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}" and svg.get("role") == "img"
    assert desc.text.startswith("7 jobs finished in the 24 hours")
    groups = bar_groups(svg)
    assert len(groups) == 24
    drawn = {i: {r.get("class"): int(r.get("data-count")) for r in g.iter(f"{SVG}rect")} for i, g in enumerate(groups)}
    assert {i: bars for i, bars in drawn.items() if bars} == {
        13: {"bar cancelled": 1}, 18: {"bar succeeded": 2}, 23: {"bar succeeded": 3, "bar failed": 1}}
    ok, bad = (next(r for r in groups[23].iter(f"{SVG}rect") if r.get("class") == f"bar {s}")
               for s in ("succeeded", "failed"))
    assert float(ok.get("height")) == pytest.approx(3 * float(bad.get("height")), rel=0.02)
    assert float(bad.get("y")) + float(bad.get("height")) == pytest.approx(float(ok.get("y")), abs=0.02)  # stacked
    hourly = tables["hourly-data"]
    assert len(hourly) == 25 and hourly[24][1:] == ["3", "1", "0", "4"] and hourly[14][1:] == ["0", "0", "1", "1"]

    workers = tables["live-workers"]
    assert workers[1][:3] == ["node-<b>1</b>", "4242", "1 of 3"]  # the host shown as text
    assert "node-&lt;b&gt;1&lt;/b&gt;" in html
    assert workers[1][4] == f"{running[:8]} sleep idle idle"
    assert f'href="/jobs/{running}"' in html
    # the page CSP allows no inline style or script
    assert " style=" not in html and not re.search(r"<script(?![^>]*\bsrc=)", html)


def test_the_dashboard_of_an_empty_service_has_empty_hours_and_no_workers(app):
    admin = signed_in(app, "admin", role="admin")
    html = admin.get("/admin", headers=HTML).get_data(as_text=True)
    groups = bar_groups(chart_of(html))
    assert len(groups) == 24 and not any(list(g) for g in groups)
    assert "No worker has sent a heartbeat recently" in html


def test_others_get_a_404_page_and_visitors_the_sign_in_page(app):
    alice = signed_in(app, "alice")
    resp = alice.get("/admin", headers=HTML)
    assert resp.status_code == 404 and resp.mimetype == "text/html"
    assert "Admin dashboard" not in resp.get_data(as_text=True)
    with pytest.raises(Forbidden):
        app.extensions["ilgun"].dashboard({"id": 1, "role": "user"})
    resp = app.test_client().get("/admin", headers=HTML)
    assert resp.status_code == 302 and resp.headers["Location"] == "/login?next=/admin"
