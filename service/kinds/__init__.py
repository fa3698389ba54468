"""The one place job kinds are registered. Adding a kind = one new module + one line here."""
from __future__ import annotations

from service.engine.kind import JobKind
from service.errors import NotFound
from service.kinds.cefr import CefrKind
from service.kinds.crawl import CrawlKind
from service.kinds.download import DownloadKind
from service.kinds.ocr import OcrKind
from service.kinds.report import ReportKind
from service.kinds.sleep import SleepKind

KINDS: dict[str, JobKind] = {k.name: k for k in (SleepKind(), DownloadKind(), OcrKind(), ReportKind(), CrawlKind(), CefrKind())}


def get_kind(name: str) -> JobKind:
    try:
        return KINDS[name]
    except KeyError:
        raise NotFound(f"Unknown job kind {name!r}.", code="UNKNOWN_KIND",
                       details={"kinds": sorted(KINDS)}) from None
