"""Fetching one page of a crawl: politeness per host, the SSRF guard on every hop, a size cap,
and every failure turned into a recorded outcome (a crawl never fails because one page did)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import requests
import urllib3.exceptions

from service.errors import UrlNotAllowed
from service.net.ssrf import BlockedAddress, UrlGuard, fetch

CHUNK_SIZE = 64 * 1024
HTML_TYPES = ("text/html", "application/xhtml+xml")
TRANSIENT_STATUSES = {408, 429}


@dataclass
class FetchOutcome:
    url: str
    final_url: str
    fetched_at: float
    elapsed: float = 0.0
    status: int | None = None
    content_type: str | None = None
    body: bytes | None = None            # kept only for HTML within the size cap
    size: int = 0                        # body bytes read (decoded)
    redirects: int = 0
    error: tuple[str, str] | None = None  # (code, message) when the page could not be read
    transient: bool = False              # worth a retry: 5xx, 408, 429, timeouts, network errors
    skipped: str | None = None           # "not_html", or a redirect hop's refusal ("robots", "offsite", ...)


class HostClock:
    """Politeness: request starts to one host are at least ``delay`` seconds apart, however
    many fetcher threads want it. Each caller books the next free start and sleeps until it."""

    def __init__(self, stop: threading.Event):
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = stop

    def wait_turn(self, host: str, delay: float) -> bool:
        """False if the crawl stopped while waiting."""
        if delay <= 0:
            return not self._stop.is_set()
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next.get(host, now))
            self._next[host] = start + delay
        return not self._stop.wait(max(0.0, start - time.monotonic()))


class HopRefused(UrlNotAllowed):
    """A redirect hop that leaves the crawl's rules; ``reason`` is recorded as the skip."""

    def __init__(self, reason: str, url: str):
        super().__init__(f"redirect to {url} refused: {reason}", code="REDIRECT_REFUSED", details={"url": url})
        self.reason = reason


def _is_html(content_type: str | None) -> bool:
    if not content_type:
        return True  # no type given: browsers sniff, and so do we (lxml copes with anything)
    return content_type.split(";", 1)[0].strip().lower() in HTML_TYPES


class PageFetcher:
    def __init__(self, session: requests.Session, guard: UrlGuard, *, timeout: tuple[float, float],
                 max_bytes: int, max_redirects: int, headers: dict, stop: threading.Event):
        self.session, self.guard, self.timeout = session, guard, timeout
        self.max_bytes, self.max_redirects, self.headers = max_bytes, max_redirects, headers
        self.stop = stop

    def fetch(self, url: str, *, any_type: bool = False, truncate: bool = False,
              check_hop: Callable[[str], None] | None = None, max_bytes: int | None = None) -> FetchOutcome:
        """``any_type``: read the body whatever its type (robots.txt); ``truncate``: keep the
        first max_bytes of a longer body instead of failing the page; ``check_hop``: raises
        HopRefused for a redirect the crawl must not follow."""
        out = FetchOutcome(url=url, final_url=url, fetched_at=time.time())
        started = time.monotonic()
        try:
            fetched = fetch(self.session, url, self.guard, max_redirects=self.max_redirects,
                            timeout=self.timeout, headers=self.headers, check_hop=check_hop)
            out.redirects = len(fetched.redirects)
            with fetched.response as response:
                out.final_url, out.status = response.url, response.status_code
                out.content_type = response.headers.get("Content-Type")
                self._read(out, response, any_type, truncate, max_bytes or self.max_bytes)
        except HopRefused as exc:
            out.skipped = exc.reason
            out.final_url = exc.details["url"]
        except UrlNotAllowed as exc:
            out.error = (exc.code, exc.message)
        except BlockedAddress as exc:
            out.error = ("URL_NOT_ALLOWED", str(exc))
        except (requests.exceptions.SSLError, urllib3.exceptions.SSLError) as exc:
            out.error = ("TLS_ERROR", str(exc)[:300])
        except (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError) as exc:
            out.error, out.transient = ("TIMEOUT", str(exc)[:300]), True
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            out.error, out.transient = ("NETWORK_ERROR", str(exc)[:300]), True
        out.elapsed = time.monotonic() - started
        return out

    def _read(self, out: FetchOutcome, response: requests.Response, any_type: bool, truncate: bool,
              max_bytes: int) -> None:
        status = response.status_code
        if status >= 400 or not 200 <= status < 300:
            out.error = ("HTTP_STATUS", f"HTTP {status}")
            out.transient = status >= 500 or status in TRANSIENT_STATUSES
            return
        if not any_type and not _is_html(out.content_type):
            out.skipped = "not_html"  # recorded with its type; the body is never downloaded
            return
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes and not truncate:
            out.error = ("PAGE_TOO_LARGE", f"Content-Length {declared} is over {max_bytes} bytes")
            return
        pieces, size = [], 0
        while True:
            # read1: whatever one socket read brings, so a cancel is seen between reads
            piece = response.raw.read1(CHUNK_SIZE, decode_content=True)
            if not piece:
                break
            size += len(piece)
            if size > max_bytes and truncate:
                pieces.append(piece[:len(piece) - (size - max_bytes)])
                size = max_bytes
                break
            if size > max_bytes:
                out.size, out.error = size, ("PAGE_TOO_LARGE", f"the page is over {max_bytes} bytes")
                return
            pieces.append(piece)
            if self.stop.is_set():
                out.size, out.error = size, ("STOPPED", "the crawl stopped while this page was read")
                return
        out.size, out.body = size, b"".join(pieces)
