"""The crawl kind against a real site on 127.0.0.1 (tests/crawl_site.py), run by the engine's
own RunContext (no database: progress goes to a list). Everything listens on loopback, so
private URLs are allowed except where a test checks the SSRF guard, which then allows only the
site's own port (and never connects anywhere else)."""
from __future__ import annotations

import csv
import json
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest

from service.crawl.page import FieldSpec
from service.crawl.robots import RobotsCache
from service.crawl.urls import TrapGuard, normalize_url, url_key
from service.engine.context import RunContext
from service.engine.kind import JobCancelled
from service.errors import UrlNotAllowed, ValidationError
from service.kinds.crawl import CrawlKind
from service.net.ssrf import UrlGuard
from tests.crawl_site import PAGES_PER_SECTION, SECTIONS, SLOW_SECONDS, CrawlSite, content_pages, price

CONFIG = {"DOWNLOAD_ALLOW_PRIVATE_URLS": True, "CRAWL_READ_TIMEOUT": 5.0, "CRAWL_RETRY_BACKOFF": 0.05}
ODD_PAGES = {"/old", "/chain", "/away", "/missing.html", "/flaky.html", "/slow.html", "/files/report.pdf", "/data.json"}


@pytest.fixture
def site():
    sites = []

    def start(**kw):
        sites.append(CrawlSite(**kw))
        return sites[-1]
    yield start
    for s in sites:
        s.close()


class Run:
    def __init__(self, tmp_path, params, config=None, guard=None):
        self.kind, self.config = CrawlKind(), {**CONFIG, **(config or {})}
        self.params = self.kind.validate({"delay": 0, **params}, self.config)
        root = tmp_path / uuid.uuid4().hex
        self.out, tmp = root / "out", root / "tmp"
        self.out.mkdir(parents=True)
        tmp.mkdir()
        job = {"id": str(uuid.uuid4()), "owner_id": 1, "kind": "crawl", "attempt": 1, "run_token": "t",
               "params": self.params}
        self.calls = []
        self.ctx = RunContext(job, self.config, lambda: (self.out, tmp), lambda *a: self.calls.append(a[2:]) or True)
        self.guard = guard

    def __call__(self) -> dict:
        from service.crawl.crawler import Crawler
        from service.crawl.settings import CrawlLimits
        limits = CrawlLimits.from_config(self.config)
        return Crawler(self.ctx, self.kind.plan(self.params, limits), limits, guard=self.guard).run()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in (self.out / "pages.jsonl").read_text().splitlines()]

    def paths(self) -> set[str]:
        return {_path(r["url"]) for r in self.records()}


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@pytest.fixture
def crawl(tmp_path):
    return lambda params, **kw: Run(tmp_path, params, **kw)


def test_whole_site_exact_pages_robots_and_traps(site, crawl):
    s = site()
    run = crawl({"url": s.url("/"), "max_depth": 3, "max_pages": 1000})
    result = run()
    expected = content_pages() | ODD_PAGES | {f"/calendar?month={m}" for m in (1, 2, 3)} \
        | {"/trap/x/", "/trap/x/x/", "/trap/x/x/x/"}
    assert run.paths() == expected
    assert result["pages"] == len(expected) == len(run.records())  # each page once
    assert s.fetched("/robots.txt") == 1 and not any(p.startswith("/private/") for p in s.requests)
    assert s.fetched("/section/1/") == 1  # the upper-case, #fragment link is the same page
    assert result["skipped"]["robots"] == 1
    assert result["skipped"]["trap"] == 1          # /trap/x/x/x/x/: "x" four times
    assert result["skipped"]["max_depth"] == 1     # /calendar?month=4
    assert result["skipped"]["offsite"] == 2       # example.invalid and the redirect to "localhost"
    assert result["partial"] is False and result["pages_per_second"] > 0
    depth = {_path(r["url"]): r["depth"] for r in run.records()}
    assert depth["/"] == 0 and depth["/section/3/"] == 1 and depth["/section/3/page/7.html"] == 2
    assert depth["/section/3/detail/7.html"] == 3  # true shortest distances


def test_page_and_depth_limits_pick_the_same_pages_every_run(site, crawl):
    s = site()
    first_level = {"/"} | {f"/section/{i}/" for i in range(SECTIONS)} | {"/old", "/chain", "/away", "/missing.html"}
    for concurrency in (1, 4, 8):
        run = crawl({"url": s.url("/"), "max_pages": 15, "concurrency": concurrency})
        result = run()
        assert run.paths() == first_level, concurrency  # home, then its links in page order
        assert result["skipped"]["max_pages"] > 0
    run = crawl({"url": s.url("/"), "max_depth": 0})
    assert run()["pages"] == 1 and run.paths() == {"/"}
    run = crawl({"url": s.url("/"), "max_depth": 1})
    run()
    assert {p for p in run.paths() if p.startswith("/section/")} == {f"/section/{i}/" for i in range(SECTIONS)}


def test_scope_allowed_domains_and_exclude_patterns(site, crawl):
    s = site()
    s.extra_links = f"<a href='http://localhost:{s.port}/section/0/detail/3.html'>by name</a>"
    run = crawl({"url": s.url("/"), "max_depth": 2, "allowed_domains": ["127.0.0.1", "localhost"],
                 "exclude": ["/section/[1-9]/", "calendar", "/trap/"]})
    result = run()
    pages = {(urlsplit(r["url"]).hostname, _path(r["url"])): r for r in run.records()}
    assert pages[("localhost", "/section/0/detail/3.html")]["status"] == 200  # an allowed domain
    assert ("localhost", "/section/0/detail/3.html") in {(h.split(":")[0], p) for _t, h, p in s.log}
    # the redirect to localhost:/section/2/ is in an allowed domain but excluded: never requested
    assert pages[("127.0.0.1", "/away")]["skipped"] == "excluded"
    assert not any(p == "/section/2/" for _t, _h, p in s.log)
    sections = {p for host, p in pages if p.startswith("/section/") and host == "127.0.0.1"}
    assert sections == {"/section/0/"} | {f"/section/0/page/{p}.html" for p in range(PAGES_PER_SECTION)}
    assert result["skipped"]["excluded"] == (SECTIONS - 1) + 3  # sections 1-9, calendar, trap, the redirect
    assert result["skipped"]["offsite"] == 1  # example.invalid


def test_extracted_fields_are_exact_in_jsonl_and_csv(site, crawl):
    s = site()
    run = crawl({"url": s.url("/section/4/"), "max_depth": 1,
                 "extract": {"h1": "h1", "sku": "span.price@data-sku", "price": "span.price",
                             "tags": {"selector": "span.tag", "all": True}, "none": "table td"}})
    run()
    pages = {_path(r["url"]): r for r in run.records()}
    for p in range(PAGES_PER_SECTION):
        r = pages[f"/section/4/page/{p}.html"]
        assert r["title"] == f"Item 4-{p}" and r["status"] == 200 and r["depth"] == 1
        assert r["fields"] == {"h1": f"Item 4-{p}", "sku": f"SKU-4-{p}", "price": price(4, p),
                               "tags": ["t4", f"p{p}"], "none": None}
        assert r["out_links"] == 4
    with open(run.out / "pages.csv", newline="") as f:
        rows = {_path(row["url"]): row for row in csv.DictReader(f)}
    assert rows["/section/4/page/5.html"]["sku"] == "SKU-4-5"
    assert json.loads(rows["/section/4/page/5.html"]["tags"]) == ["t4", "p5"]
    assert set(rows) == set(pages)


def test_redirects_errors_retries_slow_and_non_html_pages(site, crawl):
    s = site()
    run = crawl({"url": s.url("/"), "max_depth": 1})
    result = run()
    pages = {_path(r["url"]): r for r in run.records()}
    assert pages["/old"]["final_url"] == s.url("/section/0/") and pages["/old"]["redirects"] == 1
    assert pages["/chain"]["redirects"] == 2 and pages["/chain"]["status"] == 200
    assert pages["/away"]["skipped"] == "offsite" and urlsplit(pages["/away"]["final_url"]).hostname == "localhost"
    assert not any(host.startswith("localhost") for _t, host, _p in s.log)  # the offsite hop was never made
    assert pages["/missing.html"]["status"] == 404 and pages["/missing.html"]["error"]["code"] == "HTTP_STATUS"
    assert pages["/flaky.html"]["status"] == 200 and pages["/flaky.html"]["attempts"] == 2
    assert s.fetched("/flaky.html") == 2 and result["retries"] == 1
    assert pages["/slow.html"]["status"] == 200 and pages["/slow.html"]["elapsed"] >= SLOW_SECONDS * 0.9
    pdf = pages["/files/report.pdf"]
    assert pdf["skipped"] == "not_html" and pdf["content_type"] == "application/pdf" and pdf["size"] == 0
    assert result["status_counts"]["404"] == 1 and result["errors"] == 1


def test_traps_are_bounded_even_without_a_depth_cap(site, crawl):
    s = site()
    run = crawl({"url": s.url("/"), "max_depth": 50, "include": ["/calendar", "/trap/", "^[^?]*/$"]},
                config={"CRAWL_MAX_QUERY_VARIANTS": 7})
    result = run()
    months = [p for p in run.paths() if p.startswith("/calendar")]
    assert len(months) == 7 and result["skipped"]["trap"] == 2
    assert {p for p in run.paths() if p.startswith("/trap/")} == {"/trap/x/", "/trap/x/x/", "/trap/x/x/x/"}
    assert not any("page/" in p for p in run.paths())  # include patterns applied to links


def test_trap_guard_and_url_rules():
    traps = TrapGuard(max_url_length=60, max_query_variants=2, max_segment_repeats=2)
    assert traps.refusal("http://a.org/" + "x" * 60) == "trap"
    assert traps.refusal("http://a.org/a/b/a/b") is None and traps.refusal("http://a.org/a/a/a") == "trap"
    assert [traps.refusal(f"http://a.org/c?p={i}") for i in range(3)] == [None, None, "trap"]
    assert normalize_url("HTTP://Example.ORG:80/a b#frag") == "http://example.org/a%20b"
    assert normalize_url("https://x.org:443/") == "https://x.org/" and normalize_url("https://x.org:8443") == "https://x.org:8443/"
    assert normalize_url("../c.html", "http://x.org/a/b/") == "http://x.org/a/c.html"
    for bad in ("mailto:a@b.c", "javascript:void(0)", "http://u:p@x.org/", "http://x.org:99999/", "ftp://x.org/"):
        assert normalize_url(bad) is None
    assert url_key("http://x.org/p?b=2&a=1") == url_key("http://x.org/p?a=1&b=2")
    assert FieldSpec.parse("a.next@href") == FieldSpec("a.next", "href")
    assert FieldSpec.parse("a[href$='@x']") == FieldSpec("a[href$='@x']", None)


def test_robots_rules_follow_rfc_9309():
    answers = {"http://a/robots.txt": (200, "User-agent: *\nDisallow: /no\nCrawl-delay: 1.5\n"),
               "http://b/robots.txt": (404, ""), "http://c/robots.txt": (503, ""), "http://d/robots.txt": (None, "")}
    robots = RobotsCache(lambda url: answers[url], "ilgun-crawler")
    assert robots.allows("http://a/yes") and not robots.allows("http://a/no/x")
    assert robots.crawl_delay("http://a/") == 1.5
    assert robots.allows("http://b/anything")                              # unavailable: all allowed
    assert not robots.allows("http://c/x") and not robots.allows("http://d/x")  # unreachable: none
    assert RobotsCache(lambda url: answers[url], "ilgun-crawler", enabled=False).allows("http://c/x")


def test_respect_robots_off_fetches_the_private_section(site, crawl):
    s = site()
    run = crawl({"url": s.url("/"), "max_depth": 1, "respect_robots": False})
    run()
    assert "/private/secret.html" in run.paths() and s.fetched("/robots.txt") == 0


def test_crawl_delay_and_politeness_space_request_starts(site, crawl):
    s = site(sections=2, pages=2, robots="User-agent: *\nCrawl-delay: 0.3\n")
    run = crawl({"url": s.url("/section/0/"), "max_depth": 1, "concurrency": 4, "delay": 0.05})
    run()
    starts = [t for t, _h, p in s.log if p != "/robots.txt"]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) == 4 and min(gaps) >= 0.28, gaps  # the section, its 2 pages, home


def test_fetches_in_flight_never_exceed_concurrency(site, crawl):
    s = site()
    run = crawl({"url": s.url("/"), "max_depth": 2, "concurrency": 3})
    run()
    assert 1 < s.max_in_flight <= 3


def test_ssrf_guard_on_every_link_and_redirect(site, crawl):
    other = site(robots=None)  # stands for a private address: the guard must never connect to it
    s = site(extra_links=f"<a href='http://127.0.0.1:{other.port}/'>internal</a>"
                         f"<a href='http://127.0.0.1:{other.port}/x'>x</a>")
    allow_site_only = UrlGuard(classify=lambda addr, port: None if port == s.port else "private")
    run = crawl({"url": s.url("/"), "max_depth": 1}, guard=allow_site_only)
    run()
    pages = {_path(r["url"]): r for r in run.records() if urlsplit(r["url"]).port == other.port}
    assert {r["error"]["code"] for r in pages.values()} == {"URL_NOT_ALLOWED"}
    assert other.requests == []
    with pytest.raises(UrlNotAllowed) as refused:
        CrawlKind().validate({"url": s.url("/")}, {**CONFIG, "DOWNLOAD_ALLOW_PRIVATE_URLS": False})
    assert refused.value.code == "URL_NOT_ALLOWED"


def test_cancel_stops_within_a_second_and_keeps_the_pages(site, crawl):
    s = site()
    run = crawl({"url": s.url("/"), "max_depth": 3, "delay": 0.05})
    outcome = {}

    def go():
        try:
            outcome["result"] = run()
        except JobCancelled as exc:
            outcome["cancelled"] = exc
    thread = threading.Thread(target=go)
    thread.start()
    time.sleep(1.5)
    asked = time.monotonic()
    run.ctx.request_stop("cancel")
    thread.join(timeout=5)
    assert time.monotonic() - asked < 1.0
    exc = outcome["cancelled"]
    assert exc.result["partial"] is True and exc.result["pages"] == len(run.records()) > 5
    assert (run.out / "pages.csv").read_text().count("\n") == exc.result["pages"] + 1
    count = len(s.requests)
    time.sleep(0.5)
    assert len(s.requests) <= count + 1  # nothing new starts after the cancel


@pytest.mark.parametrize("params, field", [
    ({}, "url"),
    ({"url": "http://a.org/", "urls": ["http://b.org/"]}, "url"),
    ({"url": "http://a.org/", "max_pages": 0}, "max_pages"),
    ({"url": "http://a.org/", "max_pages": 10 ** 9}, "max_pages"),
    ({"url": "http://a.org/", "max_depth": -1}, "max_depth"),
    ({"url": "http://a.org/", "concurrency": 99}, "concurrency"),
    ({"url": "http://a.org/", "include": ["(unclosed"]}, "include"),
    ({"url": "http://a.org/", "exclude": ["(a)\\1"]}, "exclude"),  # backreference: not RE2
    ({"url": "http://a.org/", "extract": {"x": "p >> > q"}}, "extract"),
    ({"url": "http://a.org/", "extract": {"bad name!": "p"}}, "extract"),
    ({"url": "http://a.org/", "allowed_domains": ["http://x.org"]}, "allowed_domains"),
    ({"url": "http://a.org/", "delay": -1}, "delay"),
    ({"url": "http://a.org/", "respect_robots": "no"}, "respect_robots"),
    ({"url": "http://a.org/", "surprise": 1}, "surprise"),
])
def test_bad_params_are_refused(params, field):
    with pytest.raises(ValidationError) as refused:
        CrawlKind().validate(params, CONFIG)
    assert refused.value.details["field"] == field


def test_link_resolver_memo_gives_what_resolving_afresh_gives():
    from service.crawl.urls import LinkResolver
    bases = ["http://a.org/", "http://a.org/x/y.html", "http://a.org/x/y.html?q=1", "http://a.org/x/", "https://b.org:8443/p/q",
             "http://a.org/x/y.html#top", "http://a.org"]
    hrefs = ["", "#f", "?z=2", "z.html", "../z.html", "./z/", "/root.html", "//c.org/s", "https://d.org/t?b=2&a=1",
             "HTTP://A.ORG:80/u", "mailto:x@y.z", " /spaced ", "javascript:void(0)", "?b=2&a=1#x"]
    resolver = LinkResolver(max_entries=7)  # small: the bound is exercised too
    for _ in range(2):  # the second pass answers from the memo
        for base in bases:
            for href in hrefs:
                fresh = normalize_url(href, base)
                assert resolver.resolve(href, base) == ((fresh, url_key(fresh)) if fresh else None), (base, href)
