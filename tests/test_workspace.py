"""File names and paths from users never escape the workspace."""
from __future__ import annotations

import os
import uuid

import pytest

from service.errors import PathNotAllowed
from service.workspace import Workspace, check_plain_name, safe_filename, safe_join


@pytest.mark.parametrize("raw,expected", [
    ("report.pdf", "report.pdf"),
    ("../../etc/passwd", "passwd"),
    ("/etc/shadow", "shadow"),
    ("..\\..\\windows\\system.ini", "system.ini"),
    (".hidden", "hidden"),
    ("a\x00b.txt", "a_b.txt"),
    ("line\nbreak.txt", "line_break.txt"),
    ("CON.txt", "_CON.txt"),
    ("what?.txt", "what_.txt"),
])
def test_safe_filename(raw, expected):
    assert safe_filename(raw) == expected


@pytest.mark.parametrize("raw", ["", "..", ".", "/", "../", "   "])
def test_safe_filename_refuses_empty_results(raw):
    with pytest.raises(PathNotAllowed):
        safe_filename(raw)
    assert safe_filename(raw, default="download") == "download"


def test_long_names_keep_their_extension():
    name = safe_filename("x" * 500 + ".csv")
    assert len(name) <= 200 and name.endswith(".csv")


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", "..", ".env", "x\x00", "a\\b", ""])
def test_check_plain_name_refuses(name):
    with pytest.raises(PathNotAllowed):
        check_plain_name(name)


def test_safe_join_refuses_symlinks_that_leave_the_folder(tmp_path):
    base = tmp_path / "out"
    base.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    os.symlink(secret, base / "link.txt")
    with pytest.raises(PathNotAllowed):
        safe_join(base, "link.txt")
    (base / "fine.txt").write_text("ok")
    assert safe_join(base, "fine.txt") == (base / "fine.txt").resolve()


def test_job_dirs_are_per_user_and_need_real_job_ids(tmp_path):
    ws = Workspace(tmp_path)
    job = str(uuid.uuid4())
    assert ws.job_dir(7, job) == tmp_path / "users" / "7" / "jobs" / job
    for bad in ["../../x", "x", "/etc"]:
        with pytest.raises(PathNotAllowed):
            ws.job_dir(7, bad)


def test_discard_job_files_removes_leftovers_and_remove_job(tmp_path):
    ws, job = Workspace(tmp_path), str(uuid.uuid4())
    out, tmp = ws.output_dir(1, job), ws.tmp_dir(1, job)
    out.mkdir(parents=True)
    tmp.mkdir()
    (out / "left.txt").write_text("from a dead attempt")
    (tmp / ".x.part").write_text("partial")
    ws.discard_job_files(1, job)
    assert not ws.job_dir(1, job).exists()
    out.mkdir(parents=True)
    ws.remove_job(1, job)
    assert not ws.job_dir(1, job).exists()


def test_job_lock_is_exclusive_across_lock_objects(tmp_path):
    from filelock import Timeout
    ws, job = Workspace(tmp_path), str(uuid.uuid4())
    held = ws.job_lock(job)
    held.acquire()
    try:
        with pytest.raises(Timeout):
            ws.job_lock(job).acquire(timeout=0.1)
    finally:
        held.release()
    with ws.job_lock(job).acquire(timeout=1):
        pass
