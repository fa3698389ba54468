"""A crawl's output files, written as pages arrive: ``pages.jsonl`` (one JSON object per page)
and ``pages.csv`` (the same, flat, one column per extract field). Both go through the job's
atomic outputs, so a reader never sees half a file; on a cancel they are closed cleanly and
kept (the partial result)."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timezone

import orjson

BASE_COLUMNS = ["url", "final_url", "status", "depth", "title", "out_links", "fetched_at", "elapsed",
                "content_type", "size", "redirects", "error", "skipped"]
# Spreadsheet programs run a cell starting with these as a formula (CSV injection): a crawled
# page's title is the site's text, not ours, so such cells are prefixed with a quote.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def iso_time(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        value = orjson.dumps(value).decode()
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_START) else value
    return str(value)


class PageWriter:
    def __init__(self, ctx, field_names: list[str]):
        self.field_names = list(field_names)
        self._jsonl = ctx.open_output("pages.jsonl", "wb")
        self._csv_file = ctx.open_output("pages.csv", "wb")
        self._buffer = io.StringIO()
        self._csv = csv.writer(self._buffer, lineterminator="\n")
        self._csv.writerow(BASE_COLUMNS + self.field_names)
        self._flush_csv()
        self.count = 0

    def _flush_csv(self) -> None:
        self._csv_file.write(self._buffer.getvalue().encode("utf-8"))
        self._buffer.seek(0)
        self._buffer.truncate()

    def write(self, record: dict) -> None:
        self._jsonl.write(orjson.dumps(record) + b"\n")
        fields = record.get("fields") or {}
        error = record.get("error")
        row = [record.get(c) for c in BASE_COLUMNS]
        row[BASE_COLUMNS.index("error")] = error["code"] if error else None
        self._csv.writerow([_cell(v) for v in row] + [_cell(fields.get(n)) for n in self.field_names])
        self._flush_csv()
        self.count += 1

    def __enter__(self) -> "PageWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        # each output publishes only on a clean exit, and discards its partial file otherwise;
        # closing the first may itself fail (a full disk): the second is then closed as failed too
        try:
            self._jsonl.__exit__(exc_type, exc, tb)
        except BaseException as error:
            self._csv_file.__exit__(type(error), error, error.__traceback__)
            raise
        self._csv_file.__exit__(exc_type, exc, tb)
        return False
