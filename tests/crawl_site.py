"""A generated web site served on 127.0.0.1, for the crawl tests (and the crawl benchmark's
site shape). Deterministic: the same pages and links every run.

Layout (SECTIONS x PAGES_PER_SECTION content pages, each with a detail page):

    /                       home: links to every section, plus the odd ones below
    /section/<s>/           a section index: links to its pages
    /section/<s>/page/<p>.html      h1, a price (span.price with data-sku), links: its detail
                                    page, the next page, the section index, the home page
    /section/<s>/detail/<p>.html    h1 and a back link
    /private/...            disallowed by robots.txt (User-agent: *)
    /old                    301 -> /section/0/          /chain -> 302 -> /old
    /away                   302 -> the same site under the name "localhost" (another host)
    /missing.html           404          /flaky.html  500 the first time, then 200
    /slow.html              answers after SLOW_SECONDS   /files/report.pdf, /data.json: not HTML
    /calendar?month=<n>     links to the next month: endless query strings
    /trap/x/                links to "x/": endless /trap/x/x/x/... paths
"""
from __future__ import annotations

import html
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.integration.gunicorn_harness import LoopbackHTTPServer

SECTIONS, PAGES_PER_SECTION = 10, 20
SLOW_SECONDS = 1.0
ROBOTS = "User-agent: *\nDisallow: /private/\n\nUser-agent: other-bot\nDisallow: /\n"


def price(s: int, p: int) -> str:
    return f"{(s * 37 + p * 11) % 200 + 1}.{p % 10}9"


def _page(title: str, body: str, head: str = "") -> bytes:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{head}"
            f"</head><body>{body}</body></html>").encode()


def content_pages() -> set[str]:
    """Paths of the home, section, page and detail pages (the site's HTML pages that answer 200)."""
    paths = {"/"} | {f"/section/{s}/" for s in range(SECTIONS)}
    for s in range(SECTIONS):
        for p in range(PAGES_PER_SECTION):
            paths |= {f"/section/{s}/page/{p}.html", f"/section/{s}/detail/{p}.html"}
    return paths


class CrawlSite(LoopbackHTTPServer):
    def __init__(self, sections: int = SECTIONS, pages: int = PAGES_PER_SECTION, filler: int = 0,
                 robots: str | None = ROBOTS, extra_links: str = ""):
        self.sections, self.pages, self.filler = sections, pages, "<p>" + "lorem ipsum " * filler + "</p>"
        self.robots, self.extra_links = robots, extra_links
        self.requests: list[str] = []
        self.log: list[tuple[float, str, str]] = []  # (monotonic time, Host header, path) per request
        self.in_flight = self.max_in_flight = 0
        self.flaky_hits = 0
        self.lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

            def do_GET(self):
                with site.lock:
                    site.requests.append(self.path)
                    site.log.append((time.monotonic(), self.headers.get("Host", ""), self.path))
                    site.in_flight += 1
                    site.max_in_flight = max(site.max_in_flight, site.in_flight)
                try:
                    status, headers, body = site.answer(self.path)
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with site.lock:
                        site.in_flight -= 1

            def log_message(self, *args):
                pass

        super().__init__(Handler, "crawl-site", poll_interval=0.05)
        self.start()

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.stop()

    def fetched(self, path: str) -> int:
        with self.lock:
            return self.requests.count(path)

    # -- the site -------------------------------------------------------------------------
    def answer(self, target: str) -> tuple[int, dict, bytes]:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        html_type = {"Content-Type": "text/html; charset=utf-8"}
        if path == "/robots.txt":
            if self.robots is None:
                return 404, html_type, _page("Not found", "")
            return 200, {"Content-Type": "text/plain"}, self.robots.encode()
        if path == "/":
            links = "".join(f"<li><a href='/section/{s}/'>Section {s}</a></li>" for s in range(self.sections))
            odd = ("<a href='/private/secret.html'>private</a> <a href='/old'>old</a> <a href='/chain'>chain</a> "
                   "<a href='/away'>away</a> <a href='/missing.html'>missing</a> <a href='/flaky.html'>flaky</a> "
                   "<a href='/slow.html'>slow</a> <a href='/files/report.pdf'>pdf</a> <a href='/data.json'>json</a> "
                   "<a href='/calendar?month=1'>calendar</a> <a href='/trap/x/'>trap</a> "
                   "<a href='http://example.invalid/'>elsewhere</a> <a href='mailto:a@b.c'>mail</a> "
                   f"<a href='#top'>top</a> <a href='HTTP://127.0.0.1:{self.port}/section/1/#frag'>upper</a>"
                   + self.extra_links)
            return 200, html_type, _page("Home", f"<h1>Home</h1><ul>{links}</ul><p>{odd}</p>{self.filler}")
        if path.startswith("/section/"):
            return self._section(path, html_type)
        if path.startswith("/private/"):
            return 200, html_type, _page("Private", "<h1>Private</h1>")
        if path == "/old":
            return 301, {"Location": "/section/0/"}, b""
        if path == "/chain":
            return 302, {"Location": self.url("/old")}, b""
        if path == "/away":
            return 302, {"Location": self.url("/section/2/", host="localhost")}, b""
        if path == "/flaky.html":
            with self.lock:
                self.flaky_hits += 1
                first = self.flaky_hits == 1
            return (500, html_type, _page("Oops", "<h1>Oops</h1>")) if first else \
                (200, html_type, _page("Flaky", "<h1>Flaky but fine</h1>"))
        if path == "/slow.html":
            time.sleep(SLOW_SECONDS)
            return 200, html_type, _page("Slow", "<h1>Slow</h1>")
        if path == "/files/report.pdf":
            return 200, {"Content-Type": "application/pdf"}, b"%PDF-1.4\n" + b"0" * 2000
        if path == "/data.json":
            return 200, {"Content-Type": "application/json"}, b'{"a": 1}'
        if path == "/calendar":
            month = int(query.get("month", ["1"])[0])
            return 200, html_type, _page(f"Month {month}", f"<a href='/calendar?month={month + 1}'>next</a>")
        if path.startswith("/trap/"):
            return 200, html_type, _page("Trap", "<a href='x/'>deeper</a>")
        return 404, html_type, _page("Not found", "<h1>Not found</h1>")

    def _section(self, path: str, html_type: dict) -> tuple[int, dict, bytes]:
        bits = path.strip("/").split("/")
        try:
            s = int(bits[1])
            p = int(bits[3].removesuffix(".html")) if len(bits) == 4 else None
        except (ValueError, IndexError):
            return 404, html_type, _page("Not found", "")
        if not 0 <= s < self.sections or (p is not None and not 0 <= p < self.pages):
            return 404, html_type, _page("Not found", "")
        if len(bits) == 2:
            links = "".join(f"<li><a href='page/{q}.html'>Page {q}</a></li>" for q in range(self.pages))
            return 200, html_type, _page(f"Section {s}", f"<h1>Section {s}</h1><ul>{links}</ul><a href='/'>home</a>")
        if bits[2] == "page":
            nxt = f"<a class='next' href='{(p + 1) % self.pages}.html'>next</a>"
            body = (f"<h1>Item {s}-{p}</h1><span class='price' data-sku='SKU-{s}-{p}'>{price(s, p)}</span>"
                    f"<span class='tag'>t{s}</span><span class='tag'>p{p}</span>"
                    f"<a href='../detail/{p}.html'>detail</a> {nxt} <a href='../'>section</a> <a href='/'>home</a>"
                    f"{self.filler}")
            return 200, html_type, _page(f"Item {s}-{p}", body)
        if bits[2] == "detail":
            return 200, html_type, _page(f"Detail {s}-{p}", f"<h1>Detail {s}-{p}</h1><a href='../page/{p}.html'>back</a>")
        return 404, html_type, _page("Not found", "")
