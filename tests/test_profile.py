"""The gunicorn profile switch (service/profile.py) and the gunicorn.conf.py built on it."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import signal
import sys
import types
from pathlib import Path

import pytest

import service
from service import profile as profile_module
from service.profile import PER_WORKER_MEMORY_BYTES, Profile, choose_profile

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO_ROOT / "gunicorn.conf.py"
GIB = 1024 ** 3
PROFILE_VARIABLES = ("ILGUN_PROFILE", "WEB_CONCURRENCY", "THREADS", "MAX_WORKERS")


@pytest.fixture
def no_memory_detection(monkeypatch):
    """Make detection report 'unknown memory', as on a machine without /proc/meminfo."""
    monkeypatch.setattr(profile_module, "available_memory_bytes", lambda: (None, "nowhere (test)"))


def numbers(chosen: Profile) -> tuple[str, int, int, int]:
    return chosen.name, chosen.workers, chosen.threads, chosen.max_workers


# --- automatic choice by cores and memory ------------------------------------------------------

@pytest.mark.parametrize("cores, mem, expected", [
    (1, 64 * GIB, ("small", 1, 4, 3)),
    (1, 256 * 1024 ** 2, ("small", 1, 4, 3)),      # memory never caps small
    (2, 64 * GIB, ("medium", 3, 2, 2)),
    (2, 256 * 1024 ** 2, ("medium", 3, 2, 2)),     # nor medium
    (4, 64 * GIB, ("large", 9, 2, 2)),             # 2N+1, memory is plenty
    (4, 2 * GIB, ("large", 4, 2, 2)),              # 2 GiB / 512 MiB = 4 < 9
    (4, 2 * GIB + PER_WORKER_MEMORY_BYTES - 1, ("large", 4, 2, 2)),  # rounds down
    (16, 64 * GIB, ("large", 33, 2, 2)),
    (16, 8 * GIB, ("large", 16, 2, 2)),
    (16, 100 * 1024 ** 2, ("large", 1, 2, 2)),     # never below one worker
    (16, 0, ("large", 1, 2, 2)),
])
def test_choice_by_cores_and_memory(cores, mem, expected):
    assert numbers(choose_profile({}, cores=cores, mem_available_bytes=mem)) == expected


@pytest.mark.parametrize("cores, workers", [(3, 7), (4, 9), (16, 33)])
def test_large_without_known_memory_is_not_capped(cores, workers, no_memory_detection):
    chosen = choose_profile({}, cores=cores)
    assert numbers(chosen) == ("large", workers, 2, 2)
    assert any("no memory cap" in reason for reason in chosen.reasons)


def test_memory_cap_is_explained():
    chosen = choose_profile({}, cores=16, mem_available_bytes=8 * GIB)
    cap_reason = next(reason for reason in chosen.reasons if reason.startswith("workers ="))
    assert "16 instead of 33" in cap_reason
    assert "8.0 GiB" in cap_reason and "512 MiB per worker" in cap_reason


def test_small_and_medium_numbers_do_not_depend_on_memory(monkeypatch):
    # memory is read for them only to say whether OCR engines fit (the OCR reason line)
    for available in (None, 256 * 1024 * 1024, 64 * GIB):
        monkeypatch.setattr(profile_module, "available_memory_bytes", lambda a=available: (a, "a test"))
        assert numbers(choose_profile({}, cores=1)) == ("small", 1, 4, 3)
        assert numbers(choose_profile({}, cores=2)) == ("medium", 3, 2, 2)


def test_detected_cores_are_used_when_not_given(monkeypatch, no_memory_detection):
    monkeypatch.setattr(profile_module, "usable_cpu_cores", lambda: (4, "a test"))
    chosen = choose_profile({})
    assert numbers(chosen) == ("large", 9, 2, 2)
    assert chosen.reasons[0] == "4 usable CPU cores, from a test"


def test_real_detection_gives_a_sane_profile():
    chosen = choose_profile({})
    assert chosen.name in ("small", "medium", "large")
    assert chosen.workers >= 1 and chosen.threads >= 1 and chosen.max_workers >= 1
    assert all(isinstance(reason, str) and reason for reason in chosen.reasons)


def test_every_number_has_a_reason():
    chosen = choose_profile({}, cores=4, mem_available_bytes=64 * GIB)
    text = "\n".join(chosen.reasons)
    for phrase in ("4 CPU cores", "profile 'large'", "workers = 9", "threads = 2", "max_workers = 2",
                   "18 requests and 18 jobs"):
        assert phrase in text


def test_the_ocr_engines_memory_is_stated_with_the_limit_to_set_when_short():
    from service.profile import OCR_ENGINE_MEMORY_BYTES
    plenty = choose_profile({}, cores=2, mem_available_bytes=64 * GIB)
    assert "up to 2 engine process(es)" in plenty.reasons[-1] and "so it fits" in plenty.reasons[-1]
    # medium: 3 workers x 512 MiB + room for one engine, not two
    short = choose_profile({}, cores=2, mem_available_bytes=3 * PER_WORKER_MEMORY_BYTES + OCR_ENGINE_MEMORY_BYTES)
    assert 'KIND_LIMITS=\'{"ocr": {"global": 1}}\'' in short.reasons[-1]


# --- ILGUN_PROFILE ------------------------------------------------------------------------------

@pytest.mark.parametrize("requested, cores, expected", [
    ("small", 16, ("small", 1, 4, 3)),
    ("medium", 1, ("medium", 3, 2, 2)),
    ("medium", 16, ("medium", 3, 2, 2)),
    ("large", 1, ("large", 3, 2, 2)),
    ("auto", 1, ("small", 1, 4, 3)),
    ("auto", 2, ("medium", 3, 2, 2)),
    ("auto", 4, ("large", 9, 2, 2)),
    (" Medium ", 4, ("medium", 3, 2, 2)),
    ("", 2, ("medium", 3, 2, 2)),
])
def test_ilgun_profile_forces_a_profile(requested, cores, expected):
    chosen = choose_profile({"ILGUN_PROFILE": requested}, cores=cores, mem_available_bytes=64 * GIB)
    assert numbers(chosen) == expected


def test_forced_profile_says_so():
    chosen = choose_profile({"ILGUN_PROFILE": "small"}, cores=16)
    assert "because ILGUN_PROFILE=small" in chosen.reasons[1]


def test_unknown_profile_name_is_refused():
    with pytest.raises(ValueError, match="ILGUN_PROFILE.*'huge'"):
        choose_profile({"ILGUN_PROFILE": "huge"}, cores=2)


# --- single-number overrides -----------------------------------------------------------------

@pytest.mark.parametrize("env, expected", [
    ({"WEB_CONCURRENCY": "7"}, ("medium", 7, 2, 2)),
    ({"THREADS": "8"}, ("medium", 3, 8, 2)),
    ({"MAX_WORKERS": "5"}, ("medium", 3, 2, 5)),
    ({"WEB_CONCURRENCY": " 2 ", "THREADS": "6", "MAX_WORKERS": "1"}, ("medium", 2, 6, 1)),
    ({"WEB_CONCURRENCY": "", "THREADS": "  "}, ("medium", 3, 2, 2)),   # blank = unset
    ({"ILGUN_PROFILE": "small", "THREADS": "10"}, ("small", 1, 10, 3)),
])
def test_environment_overrides_single_numbers(env, expected):
    assert numbers(choose_profile(env, cores=2)) == expected


def test_override_reason_names_the_variable_and_the_replaced_value():
    chosen = choose_profile({"WEB_CONCURRENCY": "12"}, cores=4, mem_available_bytes=64 * GIB)
    assert "workers = 12 from WEB_CONCURRENCY (the profile chose 9)" in chosen.reasons


def test_override_beats_the_memory_cap():
    chosen = choose_profile({"WEB_CONCURRENCY": "10"}, cores=16, mem_available_bytes=GIB)
    assert chosen.workers == 10


@pytest.mark.parametrize("variable", ["WEB_CONCURRENCY", "THREADS", "MAX_WORKERS"])
@pytest.mark.parametrize("bad_value", ["0", "-1", "abc", "2.5", "3 workers"])
def test_bad_override_raises_naming_the_variable(variable, bad_value):
    with pytest.raises(ValueError, match=f"^{variable} must be a positive whole number, got '{bad_value}'"):
        choose_profile({variable: bad_value}, cores=2)


# --- detection helpers ------------------------------------------------------------------------

@pytest.mark.parametrize("cpu_max, expected", [
    ("max 100000\n", None),
    ("200000 100000\n", 2),
    ("150000 100000\n", 2),   # 1.5 cores rounds up
    ("50000 100000\n", 1),
    ("garbage\n", None),
])
def test_cgroup_cpu_quota(tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert profile_module.cgroup_cpu_limit(tmp_path) == expected


def test_no_cgroup_files_means_no_limits(tmp_path):
    assert profile_module.cgroup_cpu_limit(tmp_path) is None
    assert profile_module.cgroup_available_bytes(tmp_path) is None


def test_cgroup_cpu_quota_below_affinity_wins(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    cores, source = profile_module.usable_cpu_cores(tmp_path)
    assert cores == 2 and "cgroup CPU quota" in source and "8 cores" in source


def test_affinity_is_used_without_a_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 3, 5}, raising=False)
    assert profile_module.usable_cpu_cores(tmp_path) == (3, "the CPU affinity of this process")


def test_meminfo_parsing(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n")
    assert profile_module.meminfo_available_bytes(meminfo) == 8192000 * 1024
    meminfo.write_text("MemTotal:       16384000 kB\n")
    assert profile_module.meminfo_available_bytes(meminfo) is None
    assert profile_module.meminfo_available_bytes(tmp_path / "missing") is None


def test_cgroup_memory_counts_inactive_page_cache_as_free(tmp_path):
    mib = 1024 ** 2
    (tmp_path / "memory.max").write_text(f"{1024 * mib}\n")
    (tmp_path / "memory.current").write_text(f"{600 * mib}\n")
    (tmp_path / "memory.stat").write_text(f"anon {400 * mib}\ninactive_file {100 * mib}\n")
    assert profile_module.cgroup_available_bytes(tmp_path) == 524 * mib
    (tmp_path / "memory.max").write_text("max\n")
    assert profile_module.cgroup_available_bytes(tmp_path) is None


def test_available_memory_takes_the_smaller_of_host_and_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemAvailable: {32 * 1024 * 1024} kB\n")  # 32 GiB on the host
    (tmp_path / "memory.max").write_text(f"{2 * GIB}\n")
    (tmp_path / "memory.current").write_text(f"{GIB}\n")
    assert profile_module.available_memory_bytes(meminfo, tmp_path) == (GIB, "the cgroup memory limit")
    (tmp_path / "memory.max").write_text("max\n")
    assert profile_module.available_memory_bytes(meminfo, tmp_path) == (32 * GIB, "MemAvailable in /proc/meminfo")
    assert profile_module.available_memory_bytes(tmp_path / "missing", tmp_path)[0] is None


# --- python -m service.profile ----------------------------------------------------------------

def run_profile_cli(*args: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in PROFILE_VARIABLES}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-m", "service.profile", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def test_cli_json_with_overrides():
    result = run_profile_cli("--json", ILGUN_PROFILE="large", WEB_CONCURRENCY="6", THREADS="3", MAX_WORKERS="4")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["name"] == "large"
    assert (payload["workers"], payload["threads"], payload["max_workers"]) == (6, 3, 4)
    assert any("WEB_CONCURRENCY" in reason for reason in payload["reasons"])
    assert set(payload) == {"name", "workers", "threads", "max_workers", "reasons"}


def test_cli_text_block():
    result = run_profile_cli(ILGUN_PROFILE="small")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ilgun gunicorn profile: small"
    assert "  workers      1" in lines and "  threads      4" in lines and "  max_workers  3" in lines
    assert "why:" in lines and any(line.startswith("  - ") for line in lines)


def test_cli_reports_a_bad_value_without_a_traceback():
    result = run_profile_cli("--json", THREADS="lots")
    assert result.returncode == 2
    assert "THREADS must be a positive whole number" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# --- gunicorn.conf.py -------------------------------------------------------------------------

@pytest.fixture
def load_gunicorn_conf(monkeypatch):
    """Run gunicorn.conf.py with a controlled environment and return its settings."""
    for name in (*PROFILE_VARIABLES, "HOST", "PORT", "GRACEFUL_TIMEOUT", "TIMEOUT",
                 "MAX_REQUESTS", "MAX_REQUESTS_JITTER", "GUNICORN_ACCESSLOG", "WEB_THREADS"):
        monkeypatch.delenv(name, raising=False)  # also undoes the MAX_WORKERS the file exports

    def load(**env: str) -> dict:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(GUNICORN_CONF))

    return load


def test_gunicorn_conf_defaults(load_gunicorn_conf):
    conf = load_gunicorn_conf(ILGUN_PROFILE="medium")
    assert conf["worker_class"] == "gthread"
    assert (conf["workers"], conf["threads"]) == (3, 2)
    assert conf["bind"] == "127.0.0.1:8000"
    assert (conf["graceful_timeout"], conf["timeout"]) == (30, 60)
    assert (conf["max_requests"], conf["max_requests_jitter"]) == (2000, 200)
    assert conf["preload_app"] is False
    assert conf["accesslog"] == "-"
    assert conf["logger_class"] == "service.access_log.JsonAccessLogger"
    assert conf["raw_env"] == ["MAX_WORKERS=2", "WEB_THREADS=2"]
    assert os.environ["MAX_WORKERS"] == "2"


def test_gunicorn_conf_from_environment(load_gunicorn_conf):
    conf = load_gunicorn_conf(
        ILGUN_PROFILE="small", THREADS="6", MAX_WORKERS="5", HOST="0.0.0.0", PORT="9123",
        GRACEFUL_TIMEOUT="45", TIMEOUT="120", MAX_REQUESTS="0", MAX_REQUESTS_JITTER="0",
    )
    assert (conf["workers"], conf["threads"]) == (1, 6)
    assert conf["bind"] == "0.0.0.0:9123"
    assert (conf["graceful_timeout"], conf["timeout"]) == (45, 120)
    assert (conf["max_requests"], conf["max_requests_jitter"]) == (0, 0)
    assert os.environ["MAX_WORKERS"] == "5" and conf["raw_env"] == ["MAX_WORKERS=5", "WEB_THREADS=6"]
    assert os.environ["WEB_THREADS"] == "6"


def test_gunicorn_conf_brackets_ipv6_hosts(load_gunicorn_conf):
    assert load_gunicorn_conf(ILGUN_PROFILE="small", HOST="::1", PORT="8080")["bind"] == "[::1]:8080"


@pytest.mark.parametrize("variable, value", [("PORT", "http"), ("GRACEFUL_TIMEOUT", "0"),
                                             ("MAX_REQUESTS", "-5"), ("WEB_CONCURRENCY", "0")])
def test_gunicorn_conf_refuses_bad_values(load_gunicorn_conf, variable, value):
    with pytest.raises(ValueError, match=variable):
        load_gunicorn_conf(ILGUN_PROFILE="small", **{variable: value})


def test_gunicorn_conf_names_are_all_gunicorn_settings(load_gunicorn_conf):
    """Public names in the file are read as settings; a typo would be silently ignored."""
    from gunicorn.config import Config

    settings = set(Config().settings)
    conf = load_gunicorn_conf(ILGUN_PROFILE="small")
    public = {name for name in conf if not name.startswith("_") and name not in ("os", "sys", "choose_profile")}
    assert public <= settings, public - settings


def test_gunicorn_accepts_the_config(tmp_path):
    """gunicorn itself parses the file and loads an app with it (--check-config boots nothing)."""
    (tmp_path / "hello_app.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in PROFILE_VARIABLES}
    env["ILGUN_PROFILE"] = "small"
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--check-config",
         "--pythonpath", str(tmp_path), "hello_app:app"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- gunicorn hooks ---------------------------------------------------------------------------

class RecordingLog:
    def __init__(self):
        self.records: list[tuple[str, str]] = []

    def _record(self, level, message, *args, **_kwargs):
        self.records.append((level, message % args if args else message))

    def info(self, message, *args, **kwargs):
        self._record("info", message, *args)

    def warning(self, message, *args, **kwargs):
        self._record("warning", message, *args)

    def error(self, message, *args, **kwargs):
        self._record("error", message, *args)

    def exception(self, message, *args, **kwargs):
        self._record("exception", message, *args)

    def text(self) -> str:
        return "\n".join(message for _level, message in self.records)


@pytest.fixture
def hooks(load_gunicorn_conf):
    # post_worker_init chains a SIGTERM handler; give the test process its own back afterwards
    saved = signal.getsignal(signal.SIGTERM)
    yield load_gunicorn_conf(ILGUN_PROFILE="small", GRACEFUL_TIMEOUT="30")
    signal.signal(signal.SIGTERM, saved)


@pytest.fixture
def fake_runtime(monkeypatch):
    """Stand-in for service.runtime that records calls (the real one belongs to the lead)."""
    calls: list[tuple] = []
    runtime = types.ModuleType("service.runtime")
    runtime.start_worker_runtime = lambda app, *, label: calls.append(("start", app, label))
    runtime.stop_worker_runtime = lambda app, *, timeout: calls.append(("stop", app, timeout))
    runtime.runs_left_behind = lambda app: []
    monkeypatch.setitem(sys.modules, "service.runtime", runtime)
    monkeypatch.setattr(service, "runtime", runtime, raising=False)
    return runtime, calls


def fake_worker(pid=4242, wsgi="the-app"):
    return types.SimpleNamespace(pid=pid, wsgi=wsgi, log=RecordingLog(), cfg=types.SimpleNamespace(timeout=60))


def fake_server(graceful_timeout=30):
    return types.SimpleNamespace(log=RecordingLog(), cfg=types.SimpleNamespace(graceful_timeout=graceful_timeout))


def test_post_worker_init_starts_the_runtime(hooks, fake_runtime):
    _runtime, calls = fake_runtime
    worker = fake_worker()
    hooks["post_worker_init"](worker)
    assert calls == [("start", "the-app", "gunicorn-4242")]


@pytest.mark.parametrize("graceful, expected_timeout", [(30, 27), (10, 7), (2, 1)])
def test_worker_exit_stops_the_runtime_within_the_grace_period(hooks, fake_runtime, graceful, expected_timeout):
    _runtime, calls = fake_runtime
    worker = fake_worker()
    hooks["post_worker_init"](worker)
    hooks["worker_exit"](fake_server(graceful), worker)
    assert calls[-1] == ("stop", "the-app", expected_timeout)


def test_worker_exit_without_a_started_runtime_does_nothing(hooks, fake_runtime):
    _runtime, calls = fake_runtime
    # As in the master, which calls worker_exit for a worker that vanished before booting.
    hooks["worker_exit"](fake_server(), types.SimpleNamespace(pid=1, log=RecordingLog()))
    assert calls == []


def test_worker_exit_logs_a_failing_stop(hooks, fake_runtime):
    runtime, _calls = fake_runtime

    def broken_stop(app, *, timeout):
        raise RuntimeError("engine stuck")

    runtime.stop_worker_runtime = broken_stop
    worker, server = fake_worker(), fake_server()
    hooks["post_worker_init"](worker)
    hooks["worker_exit"](server, worker)
    assert server.log.records[-1][0] == "exception"


def test_worker_exit_ends_the_process_when_handed_back_runs_still_go_on(hooks, fake_runtime, monkeypatch):
    """After a HUP nothing SIGKILLs the old worker, and Python would wait for the thread of a job
    that ignored the stop (and now runs elsewhere too): the hook ends the process instead."""
    import os
    runtime, calls = fake_runtime
    runtime.runs_left_behind = lambda app: ["job-1"]
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)
    monkeypatch.setattr(os, "_exit", fake_exit)
    worker, server = fake_worker(), fake_server()
    hooks["post_worker_init"](worker)
    with pytest.raises(SystemExit):
        hooks["worker_exit"](server, worker)
    assert calls[-1][0] == "stop" and exits == [0]
    assert "1 handed-back job(s) still running here: job-1" in server.log.text()
    runtime.runs_left_behind = lambda app: []  # nothing left: the worker exits normally
    hooks["worker_exit"](server, worker)
    assert exits == [0]


def test_missing_runtime_function_is_logged_not_raised(hooks, fake_runtime):
    runtime, calls = fake_runtime
    del runtime.start_worker_runtime
    worker = fake_worker()
    hooks["post_worker_init"](worker)
    assert calls == []
    assert "no start_worker_runtime()" in worker.log.text()
    hooks["worker_exit"](fake_server(), worker)  # nothing started, nothing to stop
    assert calls == []


def test_missing_runtime_module_is_logged_not_raised(hooks, monkeypatch):
    monkeypatch.setitem(sys.modules, "service.runtime", None)  # makes the import fail
    monkeypatch.delattr(service, "runtime", raising=False)
    worker = fake_worker()
    hooks["post_worker_init"](worker)
    assert worker.log.records[-1][0] == "exception"
    assert "cannot import service.runtime" in worker.log.text()


def test_when_ready_logs_the_profile_and_reasons(hooks):
    server = fake_server()
    hooks["when_ready"](server)
    text = server.log.text()
    assert "ilgun profile 'small': workers=1 threads=4 MAX_WORKERS=3" in text
    assert "because ILGUN_PROFILE=small" in text


def test_signal_hooks_only_log(hooks):
    worker = fake_worker()
    hooks["worker_int"](worker)
    hooks["worker_abort"](worker)
    assert [level for level, _ in worker.log.records] == ["info", "warning"]
    assert "timeout=60s" in worker.log.text()


def test_sigterm_starts_the_stop_at_once_and_worker_exit_waits_for_it(hooks, fake_runtime):
    """The hand-back budget counts from SIGTERM, not from worker_exit (which gthread calls
    only after draining its connections), and the engine is stopped once."""
    _runtime, calls = fake_runtime
    gunicorn_handler = []
    signal.signal(signal.SIGTERM, lambda signum, frame: gunicorn_handler.append(signum))
    worker = fake_worker()
    worker.cfg.graceful_timeout = 10
    hooks["post_worker_init"](worker)
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    worker.ilgun_stopper.join(2)
    assert calls[-1] == ("stop", "the-app", 7)
    assert gunicorn_handler == [signal.SIGTERM]  # gunicorn's own handler still runs
    hooks["worker_exit"](fake_server(10), worker)
    assert [c for c in calls if c[0] == "stop"] == [("stop", "the-app", 7)]


def test_access_log_can_be_a_file_or_off(load_gunicorn_conf, tmp_path):
    assert load_gunicorn_conf(GUNICORN_ACCESSLOG=str(tmp_path / "a.log"))["accesslog"] == str(tmp_path / "a.log")
    assert load_gunicorn_conf(GUNICORN_ACCESSLOG="")["accesslog"] is None


def test_access_log_lines_are_json(tmp_path):
    import json
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config

    from service.access_log import JsonAccessLogger
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    logger = JsonAccessLogger(cfg)
    environ = {"REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "POST", "RAW_URI": "/api/v1/jobs?x=1",
               "HTTP_X_REQUEST_ID": "req-1", "HTTP_USER_AGENT": "curl/8", "HTTP_AUTHORIZATION": "Bearer secret"}
    logger.access(SimpleNamespace(status="202 ACCEPTED", sent=321, headers=[]), None, environ,
                  timedelta(milliseconds=12.5))
    for h in logger.access_log.handlers:
        h.flush()
    line = (tmp_path / "access.log").read_text().strip()
    record = json.loads(line)
    assert record["status"] == 202 and record["method"] == "POST" and record["path"] == "/api/v1/jobs?x=1"
    assert record["bytes"] == 321 and record["ms"] == 12.5 and record["request_id"] == "req-1"
    assert "secret" not in line  # credentials never reach the log


def test_database_pool_is_sized_from_the_profile():
    from service.store.database import db_pool_size
    assert db_pool_size({"WEB_THREADS": 2, "MAX_WORKERS": 2}) == 8    # 2-core profile
    assert db_pool_size({"WEB_THREADS": 4, "MAX_WORKERS": 3}) == 11   # 1-core profile
    assert db_pool_size({"WEB_THREADS": 4, "MAX_WORKERS": 3, "DB_POOL_SIZE": 5}) == 5
