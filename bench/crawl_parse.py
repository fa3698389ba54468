"""Where a crawler's CPU goes per page: parsing strategies timed on the crawl benchmark's pages.

    .venv/bin/python bench/crawl_parse.py            # 300 pages x 3 rounds, one thread

Each strategy turns a page's bytes into its title and absolute links (what a crawl needs to go
on); the ``+ fields`` rows also apply three CSS selectors (h1 text, an attribute, all tags).
The naive crawler of the issue builds BeautifulSoup's full tree for everything; ilgun's
parse_page (service/crawl/page.py) uses lxml for links and the title and builds BeautifulSoup's
tree only for the fields. Prints ms per page (median of the rounds) and the ratio to ilgun's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urljoin

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bs4 import BeautifulSoup  # noqa: E402

from crawl_site import build_site, page_path  # noqa: E402
from service.crawl.page import Extractor, FieldSpec, parse_page  # noqa: E402
from service.crawl.urls import LinkResolver  # noqa: E402

FIELDS = {"h1": FieldSpec.parse("h1"), "sku": FieldSpec.parse("span.price@data-sku"),
          "tags": FieldSpec.parse("span.tag", all_matches=True)}


def naive(builder: str, fields: bool):
    def run(body: bytes, url: str):
        soup = BeautifulSoup(body, builder)
        title = soup.title.get_text() if soup.title else None
        links = [urljoin(url, a["href"]) for a in soup.find_all("a", href=True)]
        if fields:
            _ = (soup.select_one("h1").get_text(), soup.select_one("span.price")["data-sku"],
                 [t.get_text() for t in soup.select("span.tag")])
        return title, links
    return run


def ilgun(fields: bool):
    extractor = Extractor(FIELDS) if fields else None
    resolver = LinkResolver()  # one per crawl, as in the crawler

    def run(body: bytes, url: str):
        page = parse_page(body, "text/html; charset=utf-8", url, extractor, resolver)
        return page.title, page.links  # (url, de-duplication key) pairs, as the crawl needs them
    return run


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    site = build_site(args.pages)
    pages = [(site[page_path(i)], "http://127.0.0.1:8000" + page_path(i)) for i in range(1, args.pages)]
    strategies = {
        "BeautifulSoup(html.parser), full tree": naive("html.parser", False),
        "BeautifulSoup(lxml), full tree": naive("lxml", False),
        "ilgun parse_page (lxml links + title)": ilgun(False),
        "BeautifulSoup(html.parser) + fields": naive("html.parser", True),
        "BeautifulSoup(lxml) + fields": naive("lxml", True),
        "ilgun parse_page + fields": ilgun(True),
    }
    timings = {name: [] for name in strategies}
    for _ in range(args.rounds):
        for name, run in strategies.items():
            started = time.perf_counter()
            for body, url in pages:
                run(body, url)
            timings[name].append((time.perf_counter() - started) / len(pages) * 1000)
    size = statistics.mean(len(b) for b, _ in pages) / 1024
    print(f"per page ({len(pages)} pages of ~{size:.0f} KB, median of {args.rounds} rounds, one thread):")
    base = {False: statistics.median(timings["ilgun parse_page (lxml links + title)"]),
            True: statistics.median(timings["ilgun parse_page + fields"])}
    for name, values in timings.items():
        ms = statistics.median(values)
        print(f"  {name:42} {ms:6.2f} ms  {ms / base['fields' in name]:5.1f}x ilgun's")
    print(f"reproduce: cd {REPO} && .venv/bin/python bench/crawl_parse.py --pages {args.pages} --rounds {args.rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
