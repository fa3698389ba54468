"""The database-backed ``limits`` storage: unit behaviour and real multi-process contention.

Every test runs against SQLite (a temp file) and PostgreSQL (a schema of its own, dropped
afterwards, so parallel runs and other suites never share a table). PostgreSQL tests skip
when the server is unreachable, except under CI=true, where they fail instead.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import time
import traceback

import pytest
import sqlalchemy as sa
from limits import parse
from limits.errors import ConfigurationError, StorageError
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from service.store import database, schema
from service.store import ratelimit
from service.store.ratelimit import DatabaseRateLimitStorage, purge_expired, storage_key
from tests.pg import fresh_schema_url

CHILD_TIMEOUT_SECONDS = 120


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def postgresql_url():
    """A PostgreSQL URL whose search_path is a fresh schema holding the ilgun tables."""
    with fresh_schema_url("ilgun_rl_test") as url:
        try:
            yield url
        finally:
            ratelimit.dispose_cached_engines()


@pytest.fixture
def sqlite_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'ratelimit.db'}"
    setup = database.make_engine(url)
    schema.metadata.create_all(setup)
    setup.dispose()
    yield url
    ratelimit.dispose_cached_engines()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_uri(request):
    """The ``ilgun+`` storage URI for each backend."""
    return "ilgun+" + request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def storage(storage_uri):
    return storage_from_string(storage_uri)


# --- unit behaviour ---------------------------------------------------------------------------

def test_schemes_resolve_to_the_database_storage(storage):
    assert isinstance(storage, DatabaseRateLimitStorage)
    assert storage.check() is True


def test_incr_counts_and_get_reads(storage):
    assert storage.get("k") == 0
    assert storage.incr("k", 60) == 1
    assert storage.incr("k", 60) == 2
    assert storage.incr("k", 60, amount=5) == 7
    assert storage.get("k") == 7
    assert storage.get("other") == 0


def test_expiry_is_set_by_the_first_hit_and_not_extended(storage):
    before = time.time()
    storage.incr("k", 60)
    first_expiry = storage.get_expiry("k")
    assert before + 60 <= first_expiry <= time.time() + 60
    time.sleep(0.05)
    storage.incr("k", 60)
    assert storage.get_expiry("k") == pytest.approx(first_expiry)


def test_expiry_of_unknown_key_is_now(storage):
    before = time.time()
    assert before <= storage.get_expiry("missing") <= time.time()


def test_window_rolls_over_after_expiry(storage):
    assert storage.incr("k", 0.4) == 1
    assert storage.incr("k", 0.4) == 2
    time.sleep(0.5)
    # The expired row is still in the table but no longer counts...
    assert storage.get("k") == 0
    assert storage.get_expiry("k") <= time.time()
    # ...and the next hit restarts it in place with a fresh window.
    restarted_at = time.time()
    assert storage.incr("k", 0.4) == 1
    assert storage.get_expiry("k") >= restarted_at + 0.4
    assert storage.incr("k", 0.4) == 2


def test_clear_forgets_one_key(storage):
    storage.incr("a", 60)
    storage.incr("b", 60)
    storage.clear("a")
    assert storage.get("a") == 0
    assert storage.get("b") == 1
    storage.clear("never-used")  # no error


def test_reset_forgets_every_key_and_counts_them(storage):
    for key in ("a", "b", "c"):
        storage.incr(key, 60)
    assert storage.reset() == 3
    assert storage.get("a") == storage.get("b") == storage.get("c") == 0


def test_keys_longer_than_the_column_are_hashed_and_stay_distinct(storage):
    long_a = "LIMITER/" + "x" * 400 + "/a"
    long_b = "LIMITER/" + "x" * 400 + "/b"
    assert len(storage_key(long_a)) == ratelimit.KEY_MAX_LENGTH
    assert storage_key(long_a) != storage_key(long_b)
    assert storage_key("short") == "short"
    assert storage.incr(long_a, 60) == 1
    assert storage.incr(long_a, 60) == 2
    assert storage.incr(long_b, 60) == 1
    assert storage.get(long_a) == 2
    storage.clear(long_a)
    assert storage.get(long_a) == 0


def test_purge_expired_deletes_only_ended_windows(storage):
    for key in ("old1", "old2", "old3"):
        storage.incr(key, 0.1)
    storage.incr("live1", 60)
    storage.incr("live2", 60)
    time.sleep(0.2)
    assert purge_expired(storage.engine, time.time(), batch_size=2) == 3
    with storage.engine.connect() as conn:
        keys = set(conn.execute(sa.select(schema.rate_limits.c.key)).scalars())
    assert keys == {"live1", "live2"}
    assert purge_expired(storage.engine) == 0


def test_fixed_window_limiter_in_one_process(storage):
    limiter = FixedWindowRateLimiter(storage)
    three_per_minute = parse("3 per minute")
    assert [limiter.hit(three_per_minute, "client") for _ in range(5)] == [True, True, True, False, False]
    assert limiter.test(three_per_minute, "client") is False
    stats = limiter.get_window_stats(three_per_minute, "client")
    assert stats.remaining == 0
    assert time.time() < stats.reset_time <= time.time() + 60


def test_moving_window_is_refused(storage):
    with pytest.raises(NotImplementedError):
        MovingWindowRateLimiter(storage)


def test_threads_in_one_process_share_the_pool_without_losing_counts(storage):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: storage.incr("threads", 60), range(200)))
    assert storage.get("threads") == 200


def test_storages_for_one_url_share_one_engine(storage_uri):
    assert storage_from_string(storage_uri).engine is storage_from_string(storage_uri).engine


def test_missing_table_makes_check_false_and_errors_wrappable(tmp_path):
    uri = f"ilgun+sqlite:///{tmp_path / 'empty.db'}"
    try:
        plain = storage_from_string(uri)
        assert plain.check() is False
        with pytest.raises(sa.exc.OperationalError):
            plain.incr("k", 60)
        wrapped = storage_from_string(uri, wrap_exceptions=True)
        with pytest.raises(StorageError):
            wrapped.incr("k", 60)
    finally:
        ratelimit.dispose_cached_engines()


@pytest.mark.parametrize("bad_uri", ["ilgun+sqlite://", "ilgun+sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused(bad_uri):
    with pytest.raises(ConfigurationError, match="in-memory"):
        storage_from_string(bad_uri)


def test_unknown_options_are_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="unknown rate limit storage options"):
        storage_from_string(f"ilgun+sqlite:///{tmp_path / 'x.db'}", pool_size=3)


def test_url_translation():
    translate = ratelimit.database_url_from_storage_uri
    assert translate("ilgun+sqlite:////var/db/ilgun.db") == "sqlite:////var/db/ilgun.db"
    assert translate("ilgun+postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert translate("ilgun+postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(ConfigurationError):
        translate("sqlite:////var/db/ilgun.db")


def test_flask_limiter_uses_the_storage(storage_uri):
    flask = pytest.importorskip("flask")
    flask_limiter = pytest.importorskip("flask_limiter")

    app = flask.Flask(__name__)
    limiter = flask_limiter.Limiter(
        lambda: "one-client", app=app, storage_uri=storage_uri, strategy="fixed-window"
    )

    @app.get("/ping")
    @limiter.limit("2 per minute")
    def ping():
        return "pong"

    client = app.test_client()
    assert [client.get("/ping").status_code for _ in range(3)] == [200, 200, 429]
    assert isinstance(limiter.storage, DatabaseRateLimitStorage)


# --- several processes against one database ---------------------------------------------------
# The child functions live at module level so the spawn start method can import them by name.

def _child_incr(uri: str, key: str, times: int, start, results) -> None:
    try:
        from service.store import ratelimit as _registers_schemes  # noqa: F401

        storage = storage_from_string(uri)
        start.wait(CHILD_TIMEOUT_SECONDS)
        for _ in range(times):
            storage.incr(key, 300)
        results.put(("ok", os.getpid(), times))
    except BaseException:  # noqa: BLE001 - the parent must see any failure
        results.put(("error", os.getpid(), traceback.format_exc()))


def _child_hit_limit(uri: str, limit_text: str, attempts: int, start, results) -> None:
    try:
        from service.store import ratelimit as _registers_schemes  # noqa: F401

        limiter = FixedWindowRateLimiter(storage_from_string(uri))
        item = parse(limit_text)
        start.wait(CHILD_TIMEOUT_SECONDS)
        allowed = sum(limiter.hit(item, "shared-client") for _ in range(attempts))
        results.put(("ok", os.getpid(), allowed))
    except BaseException:  # noqa: BLE001
        results.put(("error", os.getpid(), traceback.format_exc()))


def _run_children(target, args: tuple, process_count: int) -> list:
    """Start ``process_count`` spawned children, release them together, return their results."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results = context.Queue()
    children = [context.Process(target=target, args=(*args, start, results)) for _ in range(process_count)]
    for child in children:
        child.start()
    start.set()
    outcomes = []
    try:
        for _ in children:
            outcomes.append(results.get(timeout=CHILD_TIMEOUT_SECONDS))
    except queue.Empty:
        pytest.fail(f"only {len(outcomes)} of {process_count} children reported: {outcomes}")
    finally:
        for child in children:
            child.join(timeout=CHILD_TIMEOUT_SECONDS)
            if child.is_alive():
                child.kill()
    errors = [detail for status, _pid, detail in outcomes if status != "ok"]
    assert not errors, "\n".join(errors)
    assert all(child.exitcode == 0 for child in children)
    return [detail for _status, _pid, detail in outcomes]


def test_four_processes_incrementing_one_key_lose_nothing(storage, storage_uri):
    _run_children(_child_incr, (storage_uri, "contended", 250), process_count=4)
    assert storage.get("contended") == 1000


def test_fixed_window_limit_holds_across_three_processes(storage, storage_uri):
    allowed_per_process = _run_children(
        _child_hit_limit, (storage_uri, "50 per minute", 40), process_count=3
    )
    assert sum(allowed_per_process) == 50
    # Every attempt is counted, refused ones included (that is how limits' fixed window works).
    item = parse("50 per minute")
    assert storage.get(item.key_for("shared-client")) == 120
