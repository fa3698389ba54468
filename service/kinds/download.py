"""The ``download`` kind: fetch one http(s) URL into the job's workspace, through the SSRF guard.

Params: ``url`` (required), ``filename`` (optional plain file name), ``sha256`` (optional,
64 hex digits; the job fails if the download does not match).

Failure codes (``JobFailed`` unless marked transient, which the engine retries):

    URL_NOT_ALLOWED          a hop resolved to a refused address (details: host, address, reason)
    URL_SCHEME_NOT_ALLOWED   a redirect led to something other than http/https
    URL_CREDENTIALS_NOT_ALLOWED, URL_INVALID   a redirect led to such a URL
    TOO_MANY_REDIRECTS       more than DOWNLOAD_MAX_REDIRECTS redirects
    FILE_TOO_LARGE           Content-Length or the bytes received exceed DOWNLOAD_MAX_BYTES
    CHECKSUM_MISMATCH        sha256 given and different (details: expected, actual)
    UPSTREAM_CLIENT_ERROR    a 4xx answer other than 408/429 (details: http_status)
    UPSTREAM_UNEXPECTED_STATUS  a 1xx/3xx final answer, e.g. a redirect without Location
    TLS_ERROR                certificate or handshake failure (not retried: it will not fix itself)
    UPSTREAM_ERROR    (transient) 5xx, 408 or 429 (details: http_status)
    TIMEOUT           (transient) connect or read timeout
    NETWORK_ERROR     (transient) DNS failure, refused or reset connection, truncated body

Progress: percent of Content-Length when known. Without it the message is "N bytes" and the
percent is N relative to DOWNLOAD_MAX_BYTES: a true lower bound on completion, capped at 99.
"""
from __future__ import annotations

import email.message
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import requests
import urllib3.exceptions

from service.engine.kind import JobFailed, JobKind, TransientJobError
from service.errors import PathNotAllowed, UrlNotAllowed, ValidationError
from service.net.ssrf import BlockedAddress, UrlGuard, fetch, guarded_session
from service.workspace import check_plain_name, safe_filename

CHUNK_SIZE = 64 * 1024
PROGRESS_INTERVAL = 0.5  # seconds between progress reports; the context throttles writes too
DEFAULT_FILENAME = "download"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_PARAMS = {"url", "filename", "sha256"}


@dataclass(frozen=True)
class DownloadSettings:
    allow_private: bool
    max_bytes: int
    timeout: tuple[float, float]  # (connect, read), read is per socket read, not the whole body
    max_redirects: int
    user_agent: str | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "DownloadSettings":
        allow = config.get("DOWNLOAD_ALLOW_PRIVATE_URLS", False)  # env ILGUN_ALLOW_PRIVATE_URLS
        return cls(
            allow_private=bool(allow),
            max_bytes=int(config.get("DOWNLOAD_MAX_BYTES", 1024 ** 3)),
            timeout=(float(config.get("DOWNLOAD_CONNECT_TIMEOUT", 10.0)),
                     float(config.get("DOWNLOAD_READ_TIMEOUT", 30.0))),
            max_redirects=int(config.get("DOWNLOAD_MAX_REDIRECTS", 5)),
            user_agent=config.get("DOWNLOAD_USER_AGENT") or None,
        )


def _invalid(message: str, field: str) -> ValidationError:
    return ValidationError(message, details={"field": field})


def filename_from_disposition(value: str | None) -> str | None:
    """The file name a Content-Disposition header suggests (filename* preferred), unsanitised."""
    if not value:
        return None
    message = email.message.Message()
    message["content-disposition"] = value
    try:
        return message.get_filename() or None
    except (ValueError, LookupError):  # broken RFC 2231 encodings
        return None


def filename_for(params_name: str | None, response: requests.Response) -> str:
    if params_name:
        return params_name
    candidate = filename_from_disposition(response.headers.get("Content-Disposition"))
    if not candidate:
        candidate = unquote(urlsplit(response.url).path.rsplit("/", 1)[-1])
    return safe_filename(candidate or "", default=DEFAULT_FILENAME)


def _network_failure(exc: Exception) -> JobFailed:
    """requests' exceptions (connecting) and urllib3's (reading the body) as job failures."""
    if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
        return JobFailed("TLS_ERROR", f"TLS failure: {exc}")
    if isinstance(exc, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError)):
        return TransientJobError("TIMEOUT", f"The server did not answer in time: {exc}")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                        requests.exceptions.MissingSchema)):
        return JobFailed("URL_INVALID", f"The URL cannot be fetched: {exc}")
    return TransientJobError("NETWORK_ERROR", f"Network error: {exc}")


def _check_status(response: requests.Response) -> None:
    status = response.status_code
    details = {"http_status": status, "url": response.url}
    if 200 <= status < 300:
        return
    if status >= 500 or status in (408, 429):
        raise TransientJobError("UPSTREAM_ERROR", f"The server answered {status}.", details)
    if 400 <= status < 500:
        raise JobFailed("UPSTREAM_CLIENT_ERROR", f"The server answered {status}.", details)
    raise JobFailed("UPSTREAM_UNEXPECTED_STATUS", f"Unexpected answer {status}.", details)


def _declared_length(response: requests.Response) -> int | None:
    try:
        length = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return length if length >= 0 else None


def _too_large(max_bytes: int, size: int | None = None) -> JobFailed:
    return JobFailed("FILE_TOO_LARGE", f"The file is larger than the limit of {max_bytes} bytes.",
                     {"max_bytes": max_bytes, "size": size})


def _body_pieces(response: requests.Response):
    """The body as it arrives. read1 returns whatever one socket read brings; iter_content
    would block until a whole chunk is buffered, so a trickling server could delay the cancel
    check and progress indefinitely. Raises urllib3's exceptions (ReadTimeoutError, ...)."""
    while True:
        piece = response.raw.read1(CHUNK_SIZE, decode_content=True)
        if not piece:
            return
        yield piece


class _ProgressReporter:
    def __init__(self, ctx, expected: int | None, max_bytes: int):
        self.ctx, self.expected, self.max_bytes = ctx, expected, max_bytes
        self._last = float("-inf")

    def update(self, received: int) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_INTERVAL:
            return
        self._last = now
        if self.expected:
            self.ctx.progress(min(99.0, 100.0 * received / self.expected), f"{received} of {self.expected} bytes")
        else:
            self.ctx.progress(min(99.0, 100.0 * received / self.max_bytes), f"{received} bytes")


class DownloadKind(JobKind):
    name = "download"
    description = "Download one http(s) URL into the job's files; optional filename and sha256."
    per_user_limit = 4
    over_limit = "queue"
    max_attempts = 3
    retry_backoff_seconds = 5.0
    default_duration_seconds = 30.0

    def validate(self, params: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
        unknown = sorted(set(params) - _PARAMS)
        if unknown:
            raise ValidationError(f"Unknown parameter {unknown[0]!r}.", details={"field": unknown[0]})
        url = params.get("url")
        if not isinstance(url, str) or not url.strip():
            raise _invalid("url is required and must be a string.", "url")
        url = url.strip()
        try:
            # Syntax and literal addresses only: DNS is left to connect time on the worker.
            UrlGuard(DownloadSettings.from_config(config).allow_private).check_url(url)
        except UrlNotAllowed as exc:
            raise UrlNotAllowed(exc.message, code=exc.code, details={"field": "url", **(exc.details or {})}) from None
        out: dict[str, Any] = {"url": url, "filename": None, "sha256": None}
        filename = params.get("filename")
        if filename is not None:
            if not isinstance(filename, str):
                raise _invalid("filename must be a string.", "filename")
            try:
                out["filename"] = check_plain_name(filename)
            except PathNotAllowed:
                raise _invalid("filename must be a plain file name: no folders, control characters "
                               "or leading dots.", "filename") from None
        sha256 = params.get("sha256")
        if sha256 is not None:
            if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
                raise _invalid("sha256 must be 64 hexadecimal digits.", "sha256")
            out["sha256"] = sha256.lower()
        return out

    def run(self, ctx) -> dict:
        params = ctx.params
        settings = DownloadSettings.from_config(ctx.config)
        guard = UrlGuard(settings.allow_private)
        # identity: the saved bytes are the server's file, so sha256 and sizes mean what they say.
        headers = {"Accept-Encoding": "identity"}
        if settings.user_agent:
            headers["User-Agent"] = settings.user_agent
        ctx.note(f"GET {params['url']}")
        try:
            with guarded_session(guard, pool_size=2) as session:
                fetched = fetch(session, params["url"], guard, max_redirects=settings.max_redirects,
                                timeout=settings.timeout, headers=headers)
                with fetched.response as response:
                    ctx.note(f"HTTP {response.status_code} from {response.url}"
                             + (f" after {len(fetched.redirects)} redirect(s)" if fetched.redirects else "")
                             + f"; Content-Type {response.headers.get('Content-Type') or 'not given'}, "
                             f"Content-Length {response.headers.get('Content-Length') or 'not given'}")
                    _check_status(response)
                    expected = _declared_length(response)
                    if expected is not None and expected > settings.max_bytes:
                        raise _too_large(settings.max_bytes, expected)
                    filename = filename_for(params.get("filename"), response)
                    size, digest = self._stream(ctx, response, filename, expected, settings.max_bytes,
                                                params.get("sha256"))
        except BlockedAddress as exc:  # only if a connection is made outside fetch's translation
            raise JobFailed("URL_NOT_ALLOWED", str(exc), {"host": exc.host, "address": exc.address,
                                                          "reason": exc.reason}) from exc
        except UrlNotAllowed as exc:
            raise JobFailed(exc.code, exc.message, exc.details) from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise _network_failure(exc) from exc
        ctx.progress(100.0, f"{size} bytes")
        ctx.note(f"saved {filename}: {size} bytes, sha256 {digest}")
        return {
            "url": params["url"],
            "final_url": response.url,
            "filename": filename,
            "size": size,
            "content_type": response.headers.get("Content-Type"),
            "sha256": digest,
            "redirects": fetched.redirects,
            "http_status": response.status_code,
        }

    @staticmethod
    def _stream(ctx, response, filename: str, expected: int | None, max_bytes: int,
                expected_sha256: str | None) -> tuple[int, str]:
        """Write the body to the output file, checking cancel, size cap and checksum; any
        exception leaves no output behind (open_output only publishes on a clean exit)."""
        hasher = hashlib.sha256()
        received = 0
        reporter = _ProgressReporter(ctx, expected, max_bytes)
        ctx.check_cancelled()
        with ctx.open_output(filename) as out:
            for chunk in _body_pieces(response):
                ctx.check_cancelled()
                received += len(chunk)
                if received > max_bytes:
                    raise _too_large(max_bytes)
                hasher.update(chunk)
                out.write(chunk)
                reporter.update(received)
            digest = hasher.hexdigest()
            if expected_sha256 and digest != expected_sha256:
                raise JobFailed("CHECKSUM_MISMATCH", "The file does not match the expected sha256.",
                                {"expected": expected_sha256, "actual": digest})
        return received, digest
