"""robots.txt, fetched once per origin and obeyed, following RFC 9309.

- 2xx: the rules apply (the first 500 KiB are parsed, the RFC's minimum);
- 4xx (404 included): "unavailable": everything is allowed;
- 5xx, a network error or a refused address: "unreachable": everything is disallowed, as the
  RFC requires (a server in trouble is not an invitation).

Parsed by Protego (Scrapy's robots.txt parser): it supports wildcards, ``$``, Allow/Disallow
precedence by rule length and Crawl-delay, which the stdlib's urllib.robotparser gets wrong.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from protego import Protego

MAX_ROBOTS_BYTES = 500 * 1024

# (status or None, body text) for a robots.txt URL; None status = could not be fetched at all
RobotsFetch = Callable[[str], "tuple[int | None, str]"]


@dataclass
class RobotsRules:
    url: str
    state: str                      # "parsed", "unavailable" (4xx) or "unreachable" (5xx, error)
    parser: Protego | None = None

    def allows(self, url: str, agent: str) -> bool:
        if self.state == "unreachable":
            return False
        return self.parser is None or self.parser.can_fetch(url, agent)

    def crawl_delay(self, agent: str) -> float | None:
        if self.parser is None:
            return None
        delay = self.parser.crawl_delay(agent)
        return float(delay) if delay is not None else None


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class RobotsCache:
    """Rules per origin (scheme, host, port), fetched on first use. One fetch per origin even
    when several fetcher threads ask at once: the others wait for it."""

    def __init__(self, fetch: RobotsFetch, agent: str, enabled: bool = True):
        self._fetch, self.agent, self.enabled = fetch, agent, enabled
        self._rules: dict[str, RobotsRules] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def rules_for(self, url: str) -> RobotsRules | None:
        if not self.enabled:
            return None
        origin = origin_of(url)
        rules = self._rules.get(origin)
        if rules is not None:
            return rules
        with self._guard:
            lock = self._locks.setdefault(origin, threading.Lock())
        with lock:
            rules = self._rules.get(origin)
            if rules is None:
                rules = self._rules[origin] = self._load(origin + "/robots.txt")
        return rules

    def _load(self, robots_url: str) -> RobotsRules:
        status, text = self._fetch(robots_url)
        if status is None or status >= 500:
            return RobotsRules(robots_url, "unreachable")
        if status >= 400 or not 200 <= status < 300:
            return RobotsRules(robots_url, "unavailable")
        return RobotsRules(robots_url, "parsed", Protego.parse(text[:MAX_ROBOTS_BYTES]))

    def allows(self, url: str) -> bool:
        rules = self.rules_for(url)
        return rules is None or rules.allows(url, self.agent)

    def crawl_delay(self, url: str) -> float | None:
        rules = self.rules_for(url)
        return rules.crawl_delay(self.agent) if rules is not None else None

    def summary(self) -> dict[str, str]:
        return {rules.url: rules.state for rules in self._rules.values()}
