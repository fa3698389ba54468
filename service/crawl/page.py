"""Reading a fetched HTML page: title and links with lxml, the user's fields with BeautifulSoup.

Why two parsers: building BeautifulSoup's tree is where a naive crawler spends nearly all its
CPU (every node becomes several Python objects, under the GIL). Links and the title need no
such tree: lxml's C parser finds them, and it releases the GIL while it parses, so fetcher
threads parse in parallel. BeautifulSoup (with soupsieve, its CSS selector engine) runs only when
the crawl asks for ``extract`` fields, so those keep BeautifulSoup's selector semantics exactly.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

import soupsieve
from bs4 import BeautifulSoup
from lxml import etree
from lxml import html as lxml_html
from w3lib.encoding import html_to_unicode

from service.crawl.urls import LinkResolver, normalize_url

LINK_TAGS = ("a", "area")
_ATTR = re.compile(r"[A-Za-z_:][-A-Za-z0-9_:.]*")
_local = threading.local()  # lxml parsers may be shared but not used by two threads at once


def _parser() -> lxml_html.HTMLParser:
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = lxml_html.HTMLParser(encoding="utf-8", remove_comments=True)
    return parser


def _squash(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text or None


@dataclass(frozen=True)
class FieldSpec:
    """One ``extract`` entry: a CSS selector, the attribute to read (None: the text) and
    whether to keep every match (a list) or the first (a string or None)."""
    selector: str
    attr: str | None = None
    all: bool = False

    @classmethod
    def parse(cls, value: str, all_matches: bool = False) -> "FieldSpec":
        """``"h1"``, ``"a.next@href"``: an ``@name`` at the end (outside brackets) is the
        attribute. Raises ValueError (soupsieve's SelectorSyntaxError is one) when invalid."""
        selector, attr = value.strip(), None
        head, at, tail = selector.rpartition("@")
        if at and _ATTR.fullmatch(tail) and head.count("[") == head.count("]"):
            selector, attr = head.strip(), tail
        if not selector:
            raise ValueError("empty selector")
        soupsieve.compile(selector)
        return cls(selector, attr, all_matches)


class Extractor:
    def __init__(self, fields: dict[str, FieldSpec]):
        self.fields = fields
        self._compiled = {name: soupsieve.compile(spec.selector) for name, spec in fields.items()}

    def _value(self, spec: FieldSpec, element) -> str | None:
        if spec.attr is None:
            return _squash(element.get_text(" "))
        value = element.get(spec.attr)
        if isinstance(value, list):  # multi-valued attributes (class, rel) come as lists
            value = " ".join(value)
        return value

    def extract(self, text: str) -> dict:
        soup = BeautifulSoup(text, "lxml")
        try:
            out: dict = {}
            for name, spec in self.fields.items():
                sieve = self._compiled[name]
                if spec.all:
                    out[name] = [v for v in (self._value(spec, e) for e in sieve.select(soup)) if v is not None]
                else:
                    element = sieve.select_one(soup)
                    out[name] = self._value(spec, element) if element is not None else None
            return out
        finally:
            # A BeautifulSoup tree is full of reference cycles (parent <-> child), so without this
            # each page's tree waits for the cyclic garbage collector, whose full passes over a
            # worker's heap cost more than building the tree did (measured: bench/crawl.py).
            soup.decompose()


@dataclass
class ParsedPage:
    title: str | None = None
    links: list[tuple[str, str]] = field(default_factory=list)  # (url, key) in document order, each once
    link_count: int = 0                              # <a>/<area> hrefs on the page, as written
    fields: dict = field(default_factory=dict)


def decode_html(body: bytes, content_type: str | None) -> str:
    """The page as text, its encoding found as browsers do (BOM, HTTP header, <meta>), by w3lib."""
    return html_to_unicode(content_type, body)[1]


def parse_page(body: bytes, content_type: str | None, url: str, extractor: Extractor | None,
               resolver: LinkResolver | None = None) -> ParsedPage:
    resolver = resolver or LinkResolver()
    text = decode_html(body, content_type)
    page = ParsedPage()
    try:
        doc = lxml_html.document_fromstring(text.encode("utf-8"), parser=_parser())
    except (etree.ParserError, ValueError):  # an empty or whitespace-only document
        doc = None
    if doc is not None:
        title = doc.find(".//title")
        page.title = _squash(title.text_content()) if title is not None else None
        base = doc.find(".//base[@href]")
        base_url = normalize_url(base.get("href"), url) or url if base is not None else url
        seen: set[str] = set()
        for element in doc.iter(*LINK_TAGS):
            href = element.get("href")
            if not href:
                continue
            page.link_count += 1
            link = resolver.resolve(href, base_url)
            if link is not None and link[1] not in seen:
                seen.add(link[1])
                page.links.append(link)
    if extractor is not None:
        page.fields = extractor.extract(text)
    return page
