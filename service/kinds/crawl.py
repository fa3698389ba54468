"""The ``crawl`` kind: a polite, bounded crawl of one site (service/crawl/ does the work).

Params (unknown keys are refused):
    url | urls      start URL(s), http(s); at most CRAWL_MAX_START_URLS
    max_pages       pages fetched at most (default CRAWL_DEFAULT_MAX_PAGES, capped by CRAWL_MAX_PAGES)
    max_depth       links followed from a start URL at most (0: the start pages only)
    allowed_domains  follow links to these domains and their subdomains (default: the start hosts)
    include, exclude  regular expressions (RE2 syntax) searched in each discovered link's URL
    extract         {name: "css selector"} or {name: {"selector": ..., "all": true}}; "sel@attr"
                    reads an attribute instead of the text
    respect_robots  obey robots.txt (default true)
    delay           seconds between request starts to one host (default CRAWL_DEFAULT_DELAY;
                    robots.txt's Crawl-delay and CRAWL_MIN_DELAY raise it)
    concurrency     fetches in flight in this crawl (default 4, capped by CRAWL_MAX_CONCURRENCY)

One running (or queued) crawl per user: a second is refused with 409 CRAWL_ALREADY_RUNNING.
Output files: pages.jsonl and pages.csv. A cancelled crawl keeps them (result.partial = true).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import re2

from service.crawl.crawler import Crawler
from service.crawl.page import FieldSpec
from service.crawl.settings import CrawlLimits, CrawlPlan
from service.crawl.urls import Scope, compile_patterns, host_of, normalize_url
from service.engine.kind import JobKind
from service.errors import UrlNotAllowed, ValidationError
from service.net.ssrf import UrlGuard

_PARAMS = {"url", "urls", "max_pages", "max_depth", "allowed_domains", "include", "exclude", "extract",
           "respect_robots", "delay", "concurrency"}
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
MAX_PATTERNS, MAX_PATTERN_LENGTH, MAX_FIELDS, MAX_DOMAINS = 20, 500, 30, 50


def _invalid(message: str, field: str) -> ValidationError:
    return ValidationError(message, details={"field": field})


def _int(params, name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(f"{name} must be a whole number from {low} to {high}.", name)
    return value


def _string_list(params, name: str, limit: int) -> list[str]:
    value = params.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > limit or not all(isinstance(v, str) and v for v in value):
        raise _invalid(f"{name} must be a list of at most {limit} non-empty strings.", name)
    return value


def _start_urls(params, limits: CrawlLimits) -> list[str]:
    if ("url" in params) == ("urls" in params):
        raise _invalid("Give either url (one start URL) or urls (a list).", "url")
    urls = [params["url"]] if "url" in params else params["urls"]
    field = "url" if "url" in params else "urls"
    if not isinstance(urls, list) or not 1 <= len(urls) <= limits.max_start_urls \
            or not all(isinstance(u, str) and u.strip() for u in urls):
        raise _invalid(f"{field} must be a URL or a list of 1 to {limits.max_start_urls} URLs.", field)
    guard, out = UrlGuard(limits.allow_private), []
    for url in urls:
        try:
            guard.check_url(url.strip())  # syntax and literal addresses; DNS is checked at connect time
        except UrlNotAllowed as exc:
            raise UrlNotAllowed(exc.message, code=exc.code, details={"field": field, **(exc.details or {})}) from None
        normal = normalize_url(url.strip())
        if normal is None:
            raise _invalid(f"{url!r} is not a usable http(s) URL.", field)
        out.append(normal)
    return out


def _patterns(params, name: str) -> list[str]:
    patterns = _string_list(params, name, MAX_PATTERNS)
    for pattern in patterns:
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise _invalid(f"Each {name} pattern is at most {MAX_PATTERN_LENGTH} characters.", name)
        try:
            re2.compile(pattern)
        except re2.error as exc:
            raise _invalid(f"{name} pattern {pattern!r} is not a valid (RE2) regular expression: {exc}", name) from None
    return patterns


def _extract(params) -> dict[str, dict]:
    value = params.get("extract", {})
    if not isinstance(value, dict) or len(value) > MAX_FIELDS:
        raise _invalid(f"extract must be an object of at most {MAX_FIELDS} name: selector pairs.", "extract")
    out = {}
    for name, spec in value.items():
        if not _FIELD_NAME.fullmatch(name):
            raise _invalid(f"extract name {name!r} must be letters, digits, _ or - (at most 64).", "extract")
        if isinstance(spec, dict):
            if set(spec) - {"selector", "all"} or not isinstance(spec.get("all", False), bool):
                raise _invalid(f"extract.{name} takes selector and all (true/false).", "extract")
            selector, all_matches = spec.get("selector"), spec.get("all", False)
        else:
            selector, all_matches = spec, False
        if not isinstance(selector, str) or not selector.strip() or len(selector) > MAX_PATTERN_LENGTH:
            raise _invalid(f"extract.{name} must be a CSS selector (at most {MAX_PATTERN_LENGTH} characters).", "extract")
        try:
            FieldSpec.parse(selector, all_matches)
        except Exception as exc:  # soupsieve.SelectorSyntaxError and friends
            raise _invalid(f"extract.{name}: {selector!r} is not a valid CSS selector: {exc}".splitlines()[0],
                           "extract") from None
        out[name] = {"selector": selector, "all": all_matches}
    return out


class CrawlKind(JobKind):
    name = "crawl"
    description = "Crawl a site from one or more start URLs: pages.jsonl and pages.csv with titles and extracted fields."
    per_user_limit = 1
    over_limit = "refuse"
    over_limit_error = ("CRAWL_ALREADY_RUNNING",
                        "A crawl is already running for you; start another when it has ended (or cancel it).")
    max_attempts = 2
    timeout_seconds = 6 * 3600.0
    default_duration_seconds = 120.0

    def validate(self, params: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
        unknown = sorted(set(params) - _PARAMS)
        if unknown:
            raise ValidationError(f"Unknown parameter {unknown[0]!r}.", details={"field": unknown[0]})
        limits = CrawlLimits.from_config(config)
        out: dict[str, Any] = {"urls": _start_urls(params, limits)}
        out["max_pages"] = _int(params, "max_pages", min(limits.default_max_pages, limits.max_pages), 1, limits.max_pages)
        out["max_depth"] = _int(params, "max_depth", min(limits.default_max_depth, limits.max_depth), 0, limits.max_depth)
        out["concurrency"] = _int(params, "concurrency", min(limits.default_concurrency, limits.max_concurrency),
                                  1, limits.max_concurrency)
        domains = [d.strip().lower().rstrip(".") for d in _string_list(params, "allowed_domains", MAX_DOMAINS)]
        if not all(_DOMAIN.fullmatch(d) for d in domains):
            raise _invalid("allowed_domains must be host names such as example.org.", "allowed_domains")
        out["allowed_domains"] = domains
        out["include"], out["exclude"] = _patterns(params, "include"), _patterns(params, "exclude")
        out["extract"] = _extract(params)
        robots = params.get("respect_robots", True)
        if not isinstance(robots, bool):
            raise _invalid("respect_robots must be true or false.", "respect_robots")
        out["respect_robots"] = robots
        delay = params.get("delay", limits.default_delay)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 60:
            raise _invalid("delay must be a number of seconds from 0 to 60.", "delay")
        out["delay"] = float(delay)
        return out

    @staticmethod
    def plan(params: Mapping[str, Any], limits: CrawlLimits) -> CrawlPlan:
        scope = Scope(hosts=frozenset(host_of(u) for u in params["urls"]), domains=tuple(params["allowed_domains"]),
                      include=tuple(compile_patterns(params["include"])),
                      exclude=tuple(compile_patterns(params["exclude"])))
        extract = {name: FieldSpec.parse(spec["selector"], spec["all"]) for name, spec in params["extract"].items()}
        return CrawlPlan(start_urls=list(params["urls"]), max_pages=params["max_pages"], max_depth=params["max_depth"],
                         scope=scope, extract=extract, respect_robots=params["respect_robots"],
                         delay=max(params["delay"], limits.min_delay), concurrency=params["concurrency"])

    def run(self, ctx) -> dict:
        limits = CrawlLimits.from_config(ctx.config)
        ctx.note(f"crawl of {', '.join(ctx.params['urls'])}: up to {ctx.params['max_pages']} pages, "
                 f"depth {ctx.params['max_depth']}, {ctx.params['concurrency']} fetches at once")
        result = Crawler(ctx, self.plan(ctx.params, limits), limits).run()
        ctx.progress(100.0, f"{result['pages']} pages: {result['ok']} ok, {result['errors']} errors")
        return result
