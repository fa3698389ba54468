"""URL rules of a crawl: normalisation, the de-duplication key, scope and crawl-trap guards.

``normalize_url`` gives the URL that is fetched (fragment dropped, scheme and host lower-cased,
default port removed, quoted as requests would quote it); ``url_key`` the one that de-duplicates
(w3lib's canonical form, as Scrapy's duplicate filter uses: query arguments sorted and
percent-encoding normalised, so ``?b=2&a=1`` and ``?a=1&b=2`` are one page).
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import re2
from requests.utils import requote_uri
from w3lib.url import canonicalize_url

DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str, base: str | None = None) -> str | None:
    """``url`` (joined on ``base``) as a crawl fetches it, or None if it is not a usable
    http(s) URL (mailto:, javascript:, credentials, a bad port, no host)."""
    try:
        absolute = urljoin(base, url.strip()) if base else url.strip()
        parts = urlsplit(absolute)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or parts.username is not None or parts.password is not None:
            return None
        host = parts.hostname  # lower-cased, IPv6 brackets removed
        port = parts.port      # ValueError when out of range or not a number
    except ValueError:
        return None
    if not host:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return requote_uri(urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")))


def url_key(url: str) -> str:
    return canonicalize_url(url)


_HAS_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


class LinkResolver:
    """normalize_url and url_key of a page's links, remembered for the crawl: most links of a
    site repeat on every page (navigation, footers), and resolving one costs ~40 µs of Python
    (urljoin, quoting, w3lib's canonical form) — a fifth of a crawl's CPU before this. The memo
    is keyed by the href and exactly the part of the base URL its result depends on."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._memo: dict[tuple[str, str], tuple[str, str] | None] = {}

    @staticmethod
    def _scope(href: str, base: str) -> str:
        if _HAS_SCHEME.match(href):
            return ""                                   # absolute: the base does not matter
        if href.startswith("//"):
            return base.split(":", 1)[0]                # scheme-relative: the base's scheme
        if href.startswith("/"):
            slash = base.find("/", base.find("//") + 2)
            return base if slash < 0 else base[:slash]  # root-relative: the base's origin
        if not href or href[0] in "?#":
            return base                                 # the base itself
        return base.split("#", 1)[0].split("?", 1)[0].rsplit("/", 1)[0]  # relative: its folder

    def resolve(self, href: str, base: str) -> tuple[str, str] | None:
        """(url to fetch, de-duplication key), or None for a link a crawl cannot follow."""
        href = href.strip()
        memo_key = (self._scope(href, base), href)
        try:
            return self._memo[memo_key]
        except KeyError:
            pass
        url = normalize_url(href, base)
        resolved = (url, url_key(url)) if url is not None else None
        if len(self._memo) >= self.max_entries:
            self._memo.clear()  # a bound, not an LRU: sites with that many distinct links are rare
        self._memo[memo_key] = resolved
        return resolved


def host_of(url: str) -> str:
    return urlsplit(url).hostname or ""


def compile_patterns(patterns: list[str]) -> list:
    """RE2, not Python's re: a user's pattern runs against every discovered URL, and RE2 matches
    in linear time, so no pattern can hang a worker (no catastrophic backtracking)."""
    return [re2.compile(p) for p in patterns]


@dataclass
class Scope:
    """Which discovered URLs a crawl may follow. Start URLs are always fetched (the user named
    them); scope, include and exclude apply to links found on pages."""
    hosts: frozenset[str]            # same-host crawl: the start URLs' hosts (any port)
    domains: tuple[str, ...] = ()    # allowed_domains: these and their subdomains instead
    include: tuple = ()              # compiled patterns; a link must match one of them if any
    exclude: tuple = ()              # a link matching any of them is skipped

    def refusal(self, url: str) -> str | None:
        """Why ``url`` is out of scope ("offsite", "excluded", "not_included"), or None."""
        host = host_of(url)
        if self.domains:
            if not any(host == d or host.endswith("." + d) for d in self.domains):
                return "offsite"
        elif host not in self.hosts:
            return "offsite"
        if any(p.search(url) for p in self.exclude):
            return "excluded"
        if self.include and not any(p.search(url) for p in self.include):
            return "not_included"
        return None


class TrapGuard:
    """Bounds on what a site can make a crawl discover, beyond the depth and page caps: very
    long URLs, one path with endless query strings (calendars, session ids, sort orders) and
    paths that repeat a segment (``/a/b/a/b/a/b``: relative links resolved against themselves)."""

    def __init__(self, max_url_length: int, max_query_variants: int, max_segment_repeats: int):
        self.max_url_length = max_url_length
        self.max_query_variants = max_query_variants
        self.max_segment_repeats = max_segment_repeats
        self._variants: dict[tuple[str, str], int] = defaultdict(int)

    def refusal(self, url: str) -> str | None:
        """"trap" if ``url`` is past a bound, else None; counts the query variant it accepts.
        Called once per new URL (after de-duplication)."""
        if len(url) > self.max_url_length:
            return "trap"
        parts = urlsplit(url)
        segments = [s for s in parts.path.split("/") if s]
        if segments and max(segments.count(s) for s in set(segments)) > self.max_segment_repeats:
            return "trap"
        if parts.query:
            key = (parts.netloc, parts.path)
            if self._variants[key] >= self.max_query_variants:
                return "trap"
            self._variants[key] += 1
        return None
