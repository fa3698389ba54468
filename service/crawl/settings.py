"""What a crawl may do: the operator's limits (config, CRAWL_*) and one job's plan (its params,
validated and bounded by those limits in service/kinds/crawl.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from service.crawl.page import FieldSpec
from service.crawl.urls import Scope


@dataclass(frozen=True)
class CrawlLimits:
    allow_private: bool
    max_pages: int              # cap on a job's max_pages
    default_max_pages: int
    max_depth: int              # cap on a job's max_depth
    default_max_depth: int
    max_concurrency: int        # cap on a job's concurrency (fetches in flight in one crawl)
    default_concurrency: int
    default_delay: float        # seconds between request starts to one host
    min_delay: float            # an operator's floor under every job's delay
    max_crawl_delay: float      # robots.txt Crawl-delay is obeyed up to this
    connect_timeout: float
    read_timeout: float
    max_page_bytes: int
    max_redirects: int
    retries: int                # extra attempts of a page after a transient failure
    retry_backoff: float        # seconds before the first retry; doubles each time
    user_agent: str
    max_url_length: int
    max_query_variants: int     # distinct query strings followed per path
    max_segment_repeats: int    # a path segment repeated more often is a trap
    max_start_urls: int
    max_known_urls: int         # URLs remembered per crawl (bounds memory on link-heavy sites)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "CrawlLimits":
        def get(name: str, default, kind=int):
            return kind(config.get(name, default))
        return cls(
            allow_private=bool(config.get("DOWNLOAD_ALLOW_PRIVATE_URLS", False)),
            max_pages=get("CRAWL_MAX_PAGES", 10000), default_max_pages=get("CRAWL_DEFAULT_MAX_PAGES", 500),
            max_depth=get("CRAWL_MAX_DEPTH", 50), default_max_depth=get("CRAWL_DEFAULT_MAX_DEPTH", 5),
            max_concurrency=get("CRAWL_MAX_CONCURRENCY", 16), default_concurrency=get("CRAWL_DEFAULT_CONCURRENCY", 4),
            default_delay=get("CRAWL_DEFAULT_DELAY", 0.25, float), min_delay=get("CRAWL_MIN_DELAY", 0.0, float),
            max_crawl_delay=get("CRAWL_MAX_CRAWL_DELAY", 30.0, float),
            connect_timeout=get("CRAWL_CONNECT_TIMEOUT", 10.0, float),
            read_timeout=get("CRAWL_READ_TIMEOUT", 20.0, float),
            max_page_bytes=get("CRAWL_MAX_PAGE_BYTES", 5 * 1024 * 1024),
            max_redirects=get("CRAWL_MAX_REDIRECTS", 5), retries=get("CRAWL_RETRIES", 2),
            retry_backoff=get("CRAWL_RETRY_BACKOFF", 0.5, float),
            user_agent=str(config.get("CRAWL_USER_AGENT") or "ilgun-crawler/0.1"),
            max_url_length=get("CRAWL_MAX_URL_LENGTH", 1024),
            max_query_variants=get("CRAWL_MAX_QUERY_VARIANTS", 50),
            max_segment_repeats=get("CRAWL_MAX_SEGMENT_REPEATS", 3),
            max_start_urls=get("CRAWL_MAX_START_URLS", 20),
            max_known_urls=get("CRAWL_MAX_KNOWN_URLS", 200000),
        )

    @property
    def robots_agent(self) -> str:
        """The product token robots.txt groups are matched against: "ilgun-crawler/0.1" -> "ilgun-crawler"."""
        return self.user_agent.split("/", 1)[0].split()[0]


@dataclass
class CrawlPlan:
    start_urls: list[str]
    max_pages: int
    max_depth: int
    scope: Scope
    extract: dict[str, FieldSpec] = field(default_factory=dict)
    respect_robots: bool = True
    delay: float = 0.0
    concurrency: int = 4
