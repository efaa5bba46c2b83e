"""The exclusive lock on --out (``core/output/lock.py``): a second run on a locked output says who
holds it and exits 2 before loading the model; the lock is held for the whole run, removed after, and
released when the model fails to load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import classify, one_error_line, strict_jsonl
from wwts.core.errors import UsageError
from wwts.core.output import OutputLock, lock_output


FAST = ("--labels", "人,车,狗", "--top-k", "2", "--dtype", "float32", "--threads", "1")


# --- an exclusive lock on --out ---------------------------------------------------------------


HOLDER = """
import sys
from pathlib import Path
from wwts.core.output import OutputLock
lock = OutputLock(Path(sys.argv[1]), command="wwts classify other-photos --out held.jsonl")
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
lock.release()
print("released", flush=True)
"""


@pytest.fixture
def held(tmp_path):
    """``tmp_path/held.jsonl`` locked by another process for the duration of the test."""
    out = tmp_path / "held.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield out, proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=30)


@pytest.mark.parametrize("flags", [("--resume",), ("--overwrite",), ()])
def test_a_second_run_on_a_locked_out_says_who_holds_it_and_exits_2(tiny_clip, six, held, load_spy, flags):
    out, proc = held
    result = classify(six, *FAST, "--model", tiny_clip, "--out", out, *flags)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert f"pid {proc.pid}" in line and "wwts classify other-photos" in line, line
    assert load_spy == []  # refused before the model loads
    assert not out.exists()
    proc.stdin.close()
    assert proc.stdout.readline().strip() == "released"
    proc.wait(timeout=30)
    assert not out.with_name("held.jsonl.lock").exists()  # the holder removed its lock file
    assert not out.with_name("held.jsonl.lock.info").exists()
    result = classify(six, *FAST, "--model", tiny_clip, "--out", out, *flags)
    assert result.exit_code == 0, result.output
    assert len(strict_jsonl(out)) == 6


def test_the_lock_is_held_for_the_whole_run_and_removed_after(tiny_clip, six, tmp_path, monkeypatch):
    from wwts.core.engine import runner as engine

    out = tmp_path / "r.json"
    seen = []
    real = engine.Runner.batches

    def watching(self):
        for batch in real(self):
            seen.append(out.with_name("r.json.lock").exists())
            with pytest.raises(UsageError, match="another wwts run"):
                lock_output(out, overwrite=True)
            yield batch

    monkeypatch.setattr(engine.Runner, "batches", watching)
    assert classify(six, *FAST, "--model", tiny_clip, "--out", out, "--batch-size", "2").exit_code == 0
    assert seen == [True, True, True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex", "r.json"]


def test_the_lock_is_released_when_the_model_fails_to_load(tmp_path, six):
    out = tmp_path / "r.jsonl"
    result = classify(six, *FAST, "--model", tmp_path / "no-such-model", "--out", out)
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]
    with lock_output(out):  # free again
        pass


def test_lock_info_names_the_holder(tmp_path):
    out = tmp_path / "r.csv"
    with lock_output(out, command="wwts caption x --out r.csv") as lock:
        info = json.loads(lock.info_path.read_text())
        assert info["pid"] == os.getpid() and info["command"] == "wwts caption x --out r.csv"
        assert info["host"] and info["started"]
        second = OutputLock(out)
        with pytest.raises(UsageError, match=f"pid {os.getpid()} on .*wwts caption x --out r.csv"):
            second.acquire()
        assert not second.held
    assert sorted(p.name for p in tmp_path.iterdir()) == []
