"""Issue 10, the output defects: strict JSON (no NaN), --resume under any spelling of a path, an
exclusive lock on --out, a bad --out found before the model loads (exit 2), and a full disk
reported with the file that really holds the results and the records really written."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import classify
from wwts.core.output import writers
from wwts.core.errors import UsageError
from wwts.core.output import (CaptionResult, ClassifyResult, LabelScore, OutputLock, drop_records,
                              lock_output, open_writer, pending_paths, read_existing, run_sidecar_path)

FAST = ("--labels", "人,车,狗", "--top-k", "2", "--dtype", "float32", "--threads", "1")
RUN = {"task": "classify", "model": "m"}


def strict_json(data: bytes):
    """``json.loads`` as a strict parser does it: ``NaN`` / ``Infinity`` are errors."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(data.decode("utf-8"), parse_constant=refuse)


def strict_jsonl(path: Path) -> list[dict]:
    return [strict_json(line) for line in path.read_bytes().splitlines() if line.strip()]


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


# --- 1. never NaN / Infinity in JSON --------------------------------------------------------------


def nan_record(path="a.jpg") -> ClassifyResult:
    return ClassifyResult(path=path, width=4, height=3, label="人", score=math.nan,
                          top_k=[LabelScore("人", math.nan), LabelScore("车", math.inf)], note="n")


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_a_non_finite_score_becomes_an_error_record_in_strict_json(tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    with open_writer(out, ClassifyResult, {**RUN, "images_per_s": math.inf}) as w:
        w.write([nan_record(), ClassifyResult(path="b.jpg", label="车", score=0.5,
                                              top_k=[LabelScore("车", 0.5)])])
    data = out.read_bytes()
    assert b"NaN" not in data and b"Infinity" not in data
    if fmt == "json":
        doc = strict_json(data)
        records, run = doc["results"], doc["run"]
        assert run["images_per_s"] is None
    elif fmt == "jsonl":
        records = strict_jsonl(out)
        strict_json(run_sidecar_path(out).read_bytes())
    else:
        records = read_existing(out, ClassifyResult)[1]
    bad, good = records
    assert bad["path"] == "a.jpg" and bad["width"] == 4 and bad["label"] is None and bad["score"] is None
    assert bad["top_k"] == [] and bad["error"].startswith("nonfinite: ") and "nan" in bad["error"]
    assert good["error"] is None and good["score"] == 0.5


def test_resume_carries_an_old_nan_record_over_as_strict_json(tmp_path):
    out = tmp_path / "r.json"
    out.write_text('{"run": {"task": "classify"}, "results": [{"path": "a.jpg", "label": "人", '
                   '"score": NaN, "top_k": [], "width": 1, "height": 1, "error": null}]}')
    with open_writer(out, ClassifyResult, RUN, resume=True) as w:
        w.write([ClassifyResult(path="b.jpg", label="车", score=0.5)])
    records = strict_json(out.read_bytes())["results"]
    assert [r["path"] for r in records] == ["a.jpg", "b.jpg"]
    assert records[0]["score"] is None and records[0]["error"].startswith("nonfinite: ")


def test_classify_out_json_with_non_finite_scores_is_strict_json(tiny_clip, six, tmp_path, monkeypatch):
    """The safety net end to end: whatever the task gives, the published file parses strictly."""
    from wwts.core.engine import runner as engine

    real = engine.Runner.batches

    def nan_batches(self):
        for batch in real(self):
            for r in batch:
                if r.error is None:
                    r.score = math.nan
            yield batch

    monkeypatch.setattr(engine.Runner, "batches", nan_batches)
    out = tmp_path / "x.json"
    result = classify(six, *FAST, "--model", tiny_clip, "--out", out)
    assert result.exit_code == 3, result.output  # every image is now an error record
    records = strict_json(out.read_bytes())["results"]
    assert len(records) == 6 and all(r["score"] is None and r["error"] for r in records)


# --- 2. --resume recognises a file under any spelling --------------------------------------------


def test_pending_paths_match_any_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ex").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "ex" / name).write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(tmp_path / "ex" / "c.png")
    done = ["ex/a.png", str(tmp_path / "ex" / "b.png")]
    found = [Path(f"{tmp_path}/ex/a.png"), Path("./ex/b.png"), Path("ex/../ex/c.png"), Path("link.png"),
             Path("ex/c.png")]
    assert pending_paths(found, done) == [Path("ex/../ex/c.png")]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_resume_under_an_absolute_spelling_does_not_redo_images(tiny_clip, six, tmp_path, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / f"r.{fmt}"
    assert classify("ex", *FAST, "--model", tiny_clip, "--out", out).exit_code == 0
    _, records = read_existing(out, ClassifyResult)
    assert len(records) == 6
    # keep 2 records, as if the run had been interrupted
    assert drop_records(out, ClassifyResult, {r["path"] for r in records[2:]}) == 4
    result = classify(str(tmp_path / "ex"), *FAST, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    _, records = read_existing(out, ClassifyResult)
    names = sorted(Path(r["path"]).name for r in records)
    assert names == [f"p{i}.png" for i in range(6)], names  # each image once, not 2 + 6
    result = classify("./ex/../ex", *FAST, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 0 and "nothing to do" in result.stderr


# --- 3. an exclusive lock on --out ---------------------------------------------------------------


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


def test_creating_the_output_is_atomic_with_the_existence_check(tmp_path, monkeypatch):
    """A file that appears between the check and the creation is refused, not truncated."""
    out = tmp_path / "r.jsonl"
    real = writers.make_parent

    def racing(path):
        real(path)
        out.write_text("someone else's data\n")

    monkeypatch.setattr(writers, "make_parent", racing)
    with pytest.raises(UsageError, match="already exists"):
        open_writer(out, CaptionResult, RUN)
    assert out.read_text() == "someone else's data\n"


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


@pytest.mark.parametrize("name,content", [
    ("r.jsonl", b'{"path": "a.png"}\nnot json\n{"path": "b.png"}\n'),
    ("r.json", b'{"run": {}, "results": [tor'),
    ("r.csv", b"\xef\xbb\xbfpath,label,score,top_k,labels,width,height,error\r\na.png,x,notanumber,,,1,1,\r\nb.png,x,0.5,,,1,1,\r\n"),
])
def test_a_corrupt_output_on_resume_exits_2_before_the_model_loads(tiny_clip, six, tmp_path, load_spy,
                                                                   name, content):
    out = tmp_path / name
    out.write_bytes(content)
    result = classify(six, *FAST, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 2, result.output
    assert str(out) in one_error_line(result)
    assert load_spy == [] and out.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ex", name])  # lock removed


# --- 5. disk full: the real file, the real count -------------------------------------------------


def fill_disk_after(monkeypatch, good_writes: int):
    """The writer's data writes succeed ``good_writes`` times, then half a batch goes to disk and
    the write fails with ENOSPC, as on a full disk."""
    real = writers._write_all
    calls: list[int] = []

    def write(fh, data):
        calls.append(len(data))
        if len(calls) > good_writes:
            real(fh, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fh, data)

    monkeypatch.setattr(writers, "_write_all", write)
    return real


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_disk_full_names_the_file_with_the_results_and_counts_written_records(
        tiny_clip, six, tmp_path, monkeypatch, fmt):
    out = tmp_path / f"x.{fmt}"
    real = fill_disk_after(monkeypatch, 2 if fmt == "csv" else 1)  # the CSV header is the first write
    result = classify(six, *FAST, "--model", tiny_clip, "--out", out, "--batch-size", "2")
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.stderr
    saved = out.with_name("x.json.partial.jsonl") if fmt == "json" else out
    assert f"results so far are saved in {saved};" in result.stderr, result.stderr
    assert "done: 2 images, 0 errors" in result.stderr, result.stderr
    assert not (fmt == "json" and out.exists())  # nothing published after a failed write
    if fmt == "csv":
        records = read_existing(out, ClassifyResult)[1]
    else:
        records = strict_jsonl(saved)  # the torn half batch was cut off
    assert len(records) == 2
    monkeypatch.setattr(writers, "_write_all", real)  # space again
    result = classify(six, *FAST, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    records = read_existing(out, ClassifyResult)[1]
    assert sorted(Path(r["path"]).name for r in records) == [f"p{i}.png" for i in range(6)]


def test_a_failed_write_leaves_exactly_the_earlier_batches(tmp_path, monkeypatch):
    out = tmp_path / "x.jsonl"
    fill_disk_after(monkeypatch, 1)
    w = open_writer(out, CaptionResult, RUN)
    w.write([CaptionResult(path="a.jpg", caption="猫")])
    with pytest.raises(writers.WwtsError, match="cannot write results to .*x.jsonl"):
        w.write([CaptionResult(path="b.jpg", caption="狗" * 100)])
    assert w.failed and (w.written, w.written_errors) == (1, 0)
    with pytest.raises(writers.WwtsError, match="closed"):
        w.write([CaptionResult(path="c.jpg", caption="x")])
    w.close()
    assert [r["path"] for r in strict_jsonl(out)] == ["a.jpg"]
