"""One crawl, level by level (breadth first), on the job's executor thread with a small pool of
fetcher threads of its own (``concurrency``), so a crawl holds one executor slot however many
fetches it has in flight.

Why levels: the pages of one level are fetched concurrently, but which links become the next
level is decided only when the level is complete, in a fixed order (by the parent's position,
then the link's position on the page). So a page's depth is its true shortest distance from a
start URL, and the set of pages a crawl fetches under max_pages / max_depth is the same on every
run, whatever order the fetches happened to finish in.
"""
from __future__ import annotations

import heapq
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from service.crawl.fetcher import FetchOutcome, HopRefused, HostClock, PageFetcher
from service.crawl.outputs import PageWriter, iso_time
from service.crawl.page import Extractor, ParsedPage, parse_page
from service.crawl.robots import MAX_ROBOTS_BYTES, RobotsCache
from service.crawl.settings import CrawlLimits, CrawlPlan
from service.crawl.urls import LinkResolver, TrapGuard, host_of, url_key
from service.engine.kind import JobCancelled
from service.net.ssrf import UrlGuard, guarded_session

TICK = 0.2  # seconds between looks at the cancel flag and progress while fetches are in flight


@dataclass
class Node:
    url: str
    key: str
    depth: int
    start: bool = False
    attempts: int = 0
    links: list = field(default_factory=list)  # (url, key) of a fetched page's links


class Crawler:
    def __init__(self, ctx, plan: CrawlPlan, limits: CrawlLimits, guard: UrlGuard | None = None):
        self.ctx, self.plan, self.limits = ctx, plan, limits
        self.guard = guard or UrlGuard(limits.allow_private)
        self.stop = threading.Event()
        self.extractor = Extractor(plan.extract) if plan.extract else None
        self.resolver = LinkResolver()
        self.traps = TrapGuard(limits.max_url_length, limits.max_query_variants, limits.max_segment_repeats)
        self.seen: set[str] = set()
        self.counts: Counter = Counter()   # ok, errors, not_html, retries
        self.skipped: Counter = Counter()  # robots, offsite, excluded, not_included, trap, max_depth, max_pages, ...
        self.statuses: Counter = Counter()
        self.bytes = self.done = self.planned = self.depth = 0
        self.percent, self.current = 0.0, ""

    # -- the crawl ------------------------------------------------------------------------
    def run(self) -> dict:
        started = time.monotonic()
        limits, plan = self.limits, self.plan
        headers = {"User-Agent": limits.user_agent}
        with guarded_session(self.guard, pool_size=plan.concurrency + 1) as session, \
                PageWriter(self.ctx, list(plan.extract)) as writer:
            self.fetcher = PageFetcher(session, self.guard, timeout=(limits.connect_timeout, limits.read_timeout),
                                       max_bytes=limits.max_page_bytes, max_redirects=limits.max_redirects,
                                       headers=headers, stop=self.stop)
            self.robots = RobotsCache(self._fetch_robots, limits.robots_agent, plan.respect_robots)
            self.clock = HostClock(self.stop)
            pool = ThreadPoolExecutor(plan.concurrency, thread_name_prefix=f"crawl-{self.ctx.job_id[:8]}")
            try:
                self._crawl(pool, writer)
            finally:
                self.stop.set()  # fetches still in flight give up at their next read
                pool.shutdown(wait=False, cancel_futures=True)
        summary = self._summary(time.monotonic() - started, writer.count)
        if self.ctx.cancelled:
            raise JobCancelled(self.ctx.stop_reason, result={**summary, "partial": True})
        return summary

    def _crawl(self, pool: ThreadPoolExecutor, writer: PageWriter) -> None:
        level = []
        for url in self.plan.start_urls:
            key = url_key(url)
            if key not in self.seen:
                self.seen.add(key)
                level.append(Node(url, key, 0, start=True))
        while level and not self._stopping():
            self.depth = level[0].depth
            accepted = self._accept(pool, level)
            self._fetch_level(pool, accepted, writer)
            if self._stopping():
                return
            level = self._next_level(accepted)

    def _accept(self, pool: ThreadPoolExecutor, level: list[Node]) -> list[Node]:
        """The level's nodes that will be fetched, in order: robots.txt allows them and the page
        budget has room. robots.txt of new origins is fetched first, in parallel."""
        origins = {}
        for node in level:
            origins.setdefault(node.url.split("/", 3)[2], node.url)
        self._wait_all([pool.submit(self.robots.rules_for, url) for url in origins.values()])
        accepted = []
        for index, node in enumerate(level):
            if self._stopping():
                break
            if self.planned >= self.plan.max_pages:
                self.skipped["max_pages"] += len(level) - index
                break
            if not self.robots.allows(node.url):
                self.skipped["robots"] += 1
                continue
            accepted.append(node)
            self.planned += 1
        return accepted

    def _next_level(self, fetched: list[Node]) -> list[Node]:
        """New links of a finished level, in parent order then page order, through scope and
        trap checks (the trap guard counts query variants, so the order matters here too)."""
        scope, depth = self.plan.scope, fetched[0].depth + 1 if fetched else 0
        following = []
        for node in fetched:
            for url, key in node.links:
                if key in self.seen:
                    continue
                if len(self.seen) >= self.limits.max_known_urls:
                    self.skipped["too_many_urls"] += 1
                    continue
                self.seen.add(key)
                reason = scope.refusal(url) or self.traps.refusal(url)
                if reason is None and depth > self.plan.max_depth:
                    reason = "max_depth"
                if reason:
                    self.skipped[reason] += 1
                else:
                    following.append(Node(url, key, depth))
            node.links = []
        return following

    def _fetch_level(self, pool: ThreadPoolExecutor, nodes: list[Node], writer: PageWriter) -> None:
        waiting, retries, in_flight = deque(nodes), [], {}
        while (waiting or retries or in_flight) and not self._stopping():
            now = time.monotonic()
            while len(in_flight) < self.plan.concurrency and (waiting or (retries and retries[0][0] <= now)):
                node = heapq.heappop(retries)[2] if retries and retries[0][0] <= now else waiting.popleft()
                in_flight[pool.submit(self._visit, node)] = node
            pause = TICK if not retries else max(0.0, min(TICK, retries[0][0] - now))
            done, _ = wait(list(in_flight), timeout=pause, return_when=FIRST_COMPLETED) if in_flight \
                else (set(), self.stop.wait(pause))
            for future in done:
                node = in_flight.pop(future)
                outcome = future.result()
                if outcome.transient and node.attempts <= self.limits.retries and not self._stopping():
                    self.counts["retries"] += 1
                    ready = time.monotonic() + self.limits.retry_backoff * 2 ** (node.attempts - 1)
                    heapq.heappush(retries, (ready, id(node), node))
                    continue
                self._record(node, outcome, self._parse(node, outcome), writer)
            self._report()

    def _parse(self, node: Node, outcome: FetchOutcome) -> ParsedPage | None:
        """On the crawl's own thread, not the fetchers': parsing is CPU work under the GIL, and
        CPU-bound threads next to I/O threads slow each other down badly in CPython (measured
        with extract, 4 fetchers: 184 pages/s parsing on them, ~2x that here). Fetchers wait
        on sockets; this thread turns bytes into links and fields meanwhile."""
        if outcome.body is None:
            return None
        try:
            page = parse_page(outcome.body, outcome.content_type, outcome.final_url, self.extractor, self.resolver)
            node.links = page.links
        except Exception as exc:  # a page no parser copes with is that page's error, not the crawl's
            outcome.error, page = ("PARSE_ERROR", f"{type(exc).__name__}: {exc}"[:300]), None
        outcome.body = None
        return page

    # -- one page (on a fetcher thread) ----------------------------------------------------
    def _visit(self, node: Node) -> FetchOutcome:
        node.attempts += 1
        crawl_delay = min(self.robots.crawl_delay(node.url) or 0.0, self.limits.max_crawl_delay)
        if not self.clock.wait_turn(host_of(node.url), max(self.plan.delay, crawl_delay)):
            return FetchOutcome(node.url, node.url, time.time(), error=("STOPPED", "the crawl stopped"))
        self.current = node.url
        return self.fetcher.fetch(node.url, check_hop=lambda hop: self._check_hop(node, hop))

    def _check_hop(self, node: Node, url: str) -> None:
        if not node.start:  # a start URL may redirect anywhere (http -> https://www.): scope follows it
            reason = self.plan.scope.refusal(url)
            if reason:
                raise HopRefused(reason, url)
        if not self.robots.allows(url):
            raise HopRefused("robots", url)

    def _fetch_robots(self, url: str) -> tuple[int | None, str]:
        if not self.clock.wait_turn(host_of(url), self.plan.delay):
            return None, ""
        outcome = self.fetcher.fetch(url, any_type=True, truncate=True, max_bytes=MAX_ROBOTS_BYTES)
        if outcome.error and outcome.error[0].startswith("URL_"):
            # The SSRF guard refused the origin: its pages will be refused too and recorded as
            # URL_NOT_ALLOWED, which says more than "blocked by robots.txt" would.
            return 404, ""
        if outcome.error and outcome.status is None:
            return None, ""
        return outcome.status, (outcome.body or b"").decode("utf-8", "replace")

    # -- bookkeeping (on the job's thread) -------------------------------------------------
    def _record(self, node: Node, outcome: FetchOutcome, page: ParsedPage | None, writer: PageWriter) -> None:
        if outcome.error and outcome.error[0] == "STOPPED":
            return  # cut short by a cancel: not a page, just not crawled
        if node.start and outcome.final_url != node.url and not self.plan.scope.domains:
            self.plan.scope.hosts = self.plan.scope.hosts | {host_of(outcome.final_url)}
        if outcome.final_url != node.url and page is not None:
            final_key = url_key(outcome.final_url)
            if final_key != node.key and final_key in self.seen:
                node.links = []  # a redirect to a page this crawl knows already: follow it once
            self.seen.add(final_key)
        self.done += 1
        self.bytes += outcome.size
        if outcome.status is not None:
            self.statuses[str(outcome.status)] += 1
        if outcome.error:
            self.counts["errors"] += 1
        elif outcome.skipped:
            self.skipped[outcome.skipped] += 1
        else:
            self.counts["ok"] += 1
        error = {"code": outcome.error[0], "message": outcome.error[1]} if outcome.error else None
        writer.write({
            "url": node.url, "final_url": outcome.final_url, "status": outcome.status, "depth": node.depth,
            "title": page.title if page else None, "fields": page.fields if page else {},
            "out_links": page.link_count if page else 0, "fetched_at": iso_time(outcome.fetched_at),
            "elapsed": round(outcome.elapsed, 4), "content_type": outcome.content_type, "size": outcome.size,
            "redirects": outcome.redirects, "attempts": node.attempts, "error": error, "skipped": outcome.skipped,
        })

    def _stopping(self) -> bool:
        if self.ctx.cancelled and not self.stop.is_set():
            self.stop.set()
        return self.stop.is_set()

    def _wait_all(self, futures: list) -> None:
        pending = set(futures)
        while pending and not self._stopping():
            _done, pending = wait(pending, timeout=TICK)

    def _report(self) -> None:
        planned = max(self.planned, 1)
        # The plan grows level by level, so the share done can fall: the bar never goes back.
        self.percent = max(self.percent, min(99.0, 100.0 * self.done / planned))
        self.ctx.progress(self.percent, (
            f"{self.done}/{self.planned} pages (depth {self.depth}): {self.counts['ok']} ok, "
            f"{self.counts['errors']} errors, {self.skipped['robots']} blocked by robots.txt; "
            f"{self.current}"))

    def _summary(self, duration: float, written: int) -> dict:
        return {
            "pages": written, "ok": self.counts["ok"], "errors": self.counts["errors"],
            "retries": self.counts["retries"], "skipped": dict(sorted(self.skipped.items())),
            "status_counts": dict(sorted(self.statuses.items())), "bytes": self.bytes,
            "duration_seconds": round(duration, 3),
            "pages_per_second": round(written / duration, 2) if duration > 0 else None,
            "max_depth_reached": self.depth, "start_urls": self.plan.start_urls,
            "robots": self.robots.summary() if self.plan.respect_robots else None,
            "limits": {"max_pages": self.plan.max_pages, "max_depth": self.plan.max_depth,
                       "concurrency": self.plan.concurrency, "delay": self.plan.delay},
            "partial": False,
        }
