"""Issue 10, the output defects: strict JSON (no NaN), --resume under any spelling of a path, an
exclusive lock on --out, a bad --out found before the model loads (exit 2), and a full disk
reported with the file that really holds the results and the records really written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import classify

FAST = ("--labels", "人,车,狗", "--top-k", "2", "--dtype", "float32", "--threads", "1")


@pytest.fixture
def six(tmp_path) -> Path:
    folder = tmp_path / "ex"
    folder.mkdir()
    for i in range(6):
        Image.effect_noise((40 + i, 30), 64).convert("RGB").save(folder / f"p{i}.png")
    return folder


@pytest.fixture
def load_spy(monkeypatch) -> list:
    """Records every ``engine.start`` call (the model loads there) and lets it go on."""
    from wwts.core import engine  # the package the CLI calls

    calls: list = []
    real = engine.start

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "start", spy)
    return calls


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# --- 4. a bad --out is found before the model loads, exit 2 --------------------------------------


def bad_outs(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "exists.csv").write_text("x")
    return {
        "parent-is-a-file": tmp_path / "file.txt" / "r.jsonl",
        "a-folder": tmp_path / "folder.jsonl",
        "exists-without-flags": tmp_path / "exists.csv",
        "unwritable-folder": Path("/proc/wwts-test-out.jsonl"),
        "bad-extension": tmp_path / "r.txt",
    }


@pytest.mark.parametrize("case", ["parent-is-a-file", "a-folder", "exists-without-flags", "unwritable-folder",
                                  "bad-extension"])
def test_a_bad_out_exits_2_before_the_model_loads(tiny_clip, six, tmp_path, load_spy, case):
    out = bad_outs(tmp_path)[case]
    if case == "unwritable-folder" and (not Path("/proc").is_dir() or os.access("/proc", os.W_OK)
                                        and _can_create(out)):
        pytest.skip("no unwritable folder here")
    result = classify(six, *FAST, "--model", tiny_clip, "--out", out)
    assert result.exit_code == 2, result.output
    one_error_line(result)
    assert load_spy == []


def _can_create(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except OSError:
        return False
    os.unlink(path)
    return True
