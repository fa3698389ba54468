"""Domain errors. Every error a user can see subclasses IlgunError and carries a stable code.

This module knows nothing of HTTP: ``service.web.errors`` maps each class to a status in one table.
"""
from __future__ import annotations

import errno
import sqlite3


class IlgunError(Exception):
    code = "ERROR"
    message = "Something went wrong."

    def __init__(self, message: str | None = None, *, code: str | None = None,
                 details=None, retry_after: int | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        if code:
            self.code = code
        self.details = details
        self.retry_after = retry_after


class ValidationError(IlgunError):
    code = "VALIDATION_ERROR"
    message = "The request is not valid."


class NotFound(IlgunError):
    code = "NOT_FOUND"
    message = "Not found."


class InvalidState(IlgunError):
    code = "INVALID_STATE"
    message = "The job is not in a state that allows this."


class ConcurrencyLimit(IlgunError):
    code = "CONCURRENCY_LIMIT"
    message = "You already have as many jobs of this kind as are allowed at once."


class QueueFull(IlgunError):
    code = "QUEUE_FULL"
    message = "You have too many queued jobs; wait for some to finish."


class ServiceBusy(IlgunError):
    code = "SERVICE_BUSY"
    message = "The service queue is full; try again later."


class ModelUnavailable(IlgunError):
    code = "CEFR_MODEL_MISSING"
    message = "The CEFR model is not installed."


class AuthFailed(IlgunError):
    code = "AUTH_FAILED"
    message = "Invalid username or password."


class Forbidden(IlgunError):
    code = "FORBIDDEN"
    message = "You are not allowed to do this."


class AlreadyExists(IlgunError):
    code = "ALREADY_EXISTS"
    message = "It already exists."


class PathNotAllowed(ValidationError):
    code = "PATH_NOT_ALLOWED"
    message = "That file name or path is not allowed."


class UrlNotAllowed(ValidationError):
    code = "URL_NOT_ALLOWED"
    message = "That URL is not allowed."


class UnsupportedFileType(ValidationError):
    code = "UNSUPPORTED_FILE_TYPE"
    message = "That type of file is not supported."


class QuotaExceeded(IlgunError):
    code = "QUOTA_EXCEEDED"
    message = "This would take you over your disk quota; delete some files first."


class StorageFull(IlgunError):
    """The file store (FILES_ROOT) has no space left, or its filesystem quota is used up: an
    operator's problem, not the request's; answered 507."""
    code = "DISK_FULL"
    message = "The file store is full; nothing was kept. Try again once space has been freed."


# ENOSPC: the filesystem is full; EDQUOT: the service account's filesystem quota is used up.
# Both mean the same to a user: nothing more can be written until an operator frees space.
DISK_FULL_ERRNOS = frozenset(n for n in (getattr(errno, "ENOSPC", None), getattr(errno, "EDQUOT", None))
                             if n is not None)


def _chain(exc: BaseException | None):
    """``exc`` and every exception it was raised from or while handling."""
    todo, seen = [exc], set()
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        todo += [exc.__context__, exc.__cause__]


def disk_full_cause(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT OSError behind ``exc``: itself, or one it was raised from or while
    handling. Code that wraps OSErrors (a download's network errors, a document's "cannot
    read") would otherwise hide a full disk behind its own, wrong, error code."""
    return next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS), None)


def database_full(exc: BaseException | None) -> bool:
    """True if SQLite's "database or disk is full" (SQLITE_FULL) is behind ``exc``: the disk
    under the database had no room for a write, which SQLite then rolled back. sqlite3 gives
    no errno; its error code says it (SQLAlchemy raises its own error from sqlite3's)."""
    return any(isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
               for e in _chain(exc))
