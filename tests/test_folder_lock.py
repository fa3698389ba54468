"""Job folder locks in PostgreSQL (several hosts on one FILES_ROOT): exclusive across
connections, released by release() or by the holder's session ending."""
from __future__ import annotations

import time
import uuid

import pytest
from filelock import Timeout

from service.store import database
from service.store.folder_lock import AdvisoryFolderLock, job_lock_key
from tests.pg import fresh_schema_url


@pytest.fixture
def pg_engines():
    with fresh_schema_url("ilgun_lock_test", create_tables=False) as url:
        engines = [database.make_engine(url), database.make_engine(url)]  # two "hosts"
        yield engines
        for e in engines:
            e.dispose()


def test_one_holder_at_a_time_across_hosts(pg_engines):
    a, b = pg_engines
    job = str(uuid.uuid4())
    first = AdvisoryFolderLock(a, job).acquire(timeout=1)
    started = time.monotonic()
    with pytest.raises(Timeout):
        AdvisoryFolderLock(b, job).acquire(timeout=0.3)
    assert time.monotonic() - started >= 0.25
    other_job = AdvisoryFolderLock(b, str(uuid.uuid4())).acquire(timeout=0.3)  # other jobs are free
    other_job.release()
    first.release()
    with AdvisoryFolderLock(b, job).acquire(timeout=1) as second:
        assert second.is_locked
    assert not second.is_locked


def test_a_dead_holders_lock_goes_with_its_session(pg_engines):
    a, b = pg_engines
    job = str(uuid.uuid4())
    held = AdvisoryFolderLock(a, job).acquire(timeout=1)
    held._conn.close()  # the host died: its session, and the lock, are gone
    AdvisoryFolderLock(b, job).acquire(timeout=2).release()


def test_keys_are_stable_and_signed_64_bit():
    job = "0f8e6c1a-3b2d-4c5e-9f10-112233445566"
    assert job_lock_key(job) == job_lock_key(job.upper())
    assert 0 <= job_lock_key(job) < 2 ** 63
