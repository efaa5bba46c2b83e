"""The result writers (``core/output/writers.py``): formats, escaping, durability, atomic publish, appending on
resume, dropping records to retry, a full disk."""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import os
from pathlib import Path

import pytest

from tests.helpers import BAD_NAME, FORMATS, RUN, classify, classify_records, strict_jsonl
from wwts.core import atomic
from wwts.core.errors import UsageError, WwtsError
from wwts.core.output import (CaptionResult, ClassifyResult, LabelScore, drop_records, open_writer, output_format,
                              partial_path, read_existing, run_sidecar_path, writers)

BOM = b"\xef\xbb\xbf"
def caption_records() -> list[CaptionResult]:
    return [
        CaptionResult(path="/照片/海边.jpg", width=1024, height=768,
                      caption="一只狗在海边奔跑，\"很开心\", 对吧"),
        CaptionResult(path=BAD_NAME, width=5, height=5, caption="a photo of\na cat"),
        CaptionResult(path="/照片/空.png", width=1, height=1, caption=""),
        CaptionResult(path="@坏.heic", error="unidentified: cannot identify image file"),
        CaptionResult(path="/x/tab.jpg", width=1, height=1, caption="\t+SUM(A1:A2)"),
    ]


def _as_dict(record) -> dict:
    """The expected JSON shape of a record: its dataclass fields, LabelScore as dicts."""
    return dataclasses.asdict(record)


def _csv_expected(record) -> dict:
    """The record as the CSV can carry it: scores rounded to the 4 decimals written."""
    d = _as_dict(record)
    for name in ("frames", "note"):  # JSON-only fields: no CSV column
        d[name] = None
    if "score" in d and d["score"] is not None:
        d["score"] = round(d["score"], 4)
    if "top_k" in d:
        d["top_k"] = [{"label": t["label"], "score": round(t["score"], 4)} for t in d["top_k"]]
    return d


def _expected(fmt: str, records) -> list[dict]:
    return [_csv_expected(r) if fmt == "csv" else _as_dict(r) for r in records]


def _out(tmp_path: Path, fmt: str) -> Path:
    return tmp_path / "结果" / f"results.{fmt}"


def _raw_csv_rows(path: Path) -> list[list[str]]:
    data = path.read_bytes()
    assert data.startswith(BOM)
    return list(csv.reader(io.StringIO(data[len(BOM):].decode("utf-8"), newline="")))


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fmt"), [("a.csv", "csv"), ("A.CSV", "csv"), ("x.Json", "json"),
                                           ("x.tar.jsonl", "jsonl"), ("x.JSONL", "jsonl")])
def test_output_format_by_extension(name, fmt):
    assert output_format(Path(name)) == fmt


@pytest.mark.parametrize("name", ["out.txt", "out", "out.csv.bak", "out.xlsx"])
def test_output_format_rejects_other_extensions(name):
    with pytest.raises(UsageError, match=r"\.csv, \.json, \.jsonl") as info:
        output_format(Path(name))
    assert info.value.exit_code == 2


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("rtype", "make"), [(ClassifyResult, classify_records), (CaptionResult, caption_records)])
def test_round_trip(tmp_path, fmt, rtype, make):
    out = _out(tmp_path, fmt)
    records = make()
    with open_writer(out, rtype, RUN) as w:
        w.write(records[:2])
        w.write(records[2:])
    data = out.read_bytes()
    data.decode("utf-8")  # valid UTF-8 despite the lone surrogates in the paths
    run, back = read_existing(out, rtype)
    assert back == _expected(fmt, records)
    assert back[1]["path"] == BAD_NAME
    assert run is not None and run["labels"] == ["人", "车"] and run["dtype"] == "bfloat16"


@pytest.mark.parametrize(("rtype", "header"), [
    (ClassifyResult, b"path,label,score,top_k,labels,width,height,error\r\n"),
    (CaptionResult, b"path,caption,width,height,error\r\n"),
])
def test_csv_bom_and_exact_header(tmp_path, rtype, header):
    out = tmp_path / "r.csv"
    open_writer(out, rtype, RUN).close()
    assert out.read_bytes() == BOM + header


def test_csv_cells(tmp_path):
    out = tmp_path / "r.csv"
    recs = classify_records()
    negative = ClassifyResult(path="/n.jpg", width=1, height=1, label="人", score=-0.5, top_k=[])
    with open_writer(out, ClassifyResult, RUN) as w:
        w.write(recs + [negative])
    rows = _raw_csv_rows(out)
    assert rows[1] == ["/照片/猫 咪.jpg", "人", "0.9120", "人:0.9120;车:0.0510", "", "640", "480", ""]
    assert rows[2][0] == "/photos/\\udcff\\udcfe\\udcb0\\udca1.jpg"  # backslashreplace-style
    assert rows[3] == ["/照片/坏.jpg", "", "", "", "", "", "", "truncated: image file is truncated (3 bytes not processed)"]
    # Formula-looking text cells are neutralised with a leading quote (OWASP).
    assert rows[4][0] == "'=cmd|' /C calc'!A0.jpg"
    assert rows[4][1] == "'-负号标签"
    assert rows[4][3] == "'-负号标签:0.5000;a:b;c:0.5000"
    # A leading quote is doubled so reading can strip exactly one; ambiguous backslashes escaped.
    assert rows[5][0] == "C:\\x5cudc80\\x5cx5c\\'q.jpg"
    assert rows[5][1] == "''引号"
    # Numbers are never prefixed, not even a negative one.
    assert rows[7][2] == "-0.5000"


def test_csv_caption_formula_cells(tmp_path):
    out = tmp_path / "c.csv"
    with open_writer(out, CaptionResult, RUN) as w:
        w.write(caption_records())
    rows = _raw_csv_rows(out)
    assert rows[4][0] == "'@坏.heic"
    assert rows[5][1] == "'\t+SUM(A1:A2)"
    assert rows[2][1] == "a photo of\na cat"


def test_existing_output_refused(tmp_path):
    for fmt in FORMATS:
        out = tmp_path / f"r.{fmt}"
        out.write_text("old", encoding="utf-8")
        with pytest.raises(UsageError, match="--overwrite") as info:
            open_writer(out, ClassifyResult, RUN)
        assert info.value.exit_code == 2
        assert out.read_text(encoding="utf-8") == "old"


def test_unfinished_json_partial_refused(tmp_path):
    out = tmp_path / "r.json"
    w = open_writer(out, ClassifyResult, RUN)
    w.write(classify_records()[:1])
    w.abort()
    assert not out.exists()
    with pytest.raises(UsageError, match="partial"):
        open_writer(out, ClassifyResult, RUN)


def test_overwrite_with_resume_refused(tmp_path):
    with pytest.raises(UsageError):
        open_writer(tmp_path / "r.csv", ClassifyResult, RUN, overwrite=True, resume=True)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_overwrite_truncates_csv_jsonl_at_open(tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    with open_writer(out, ClassifyResult, RUN) as w:
        w.write(classify_records())
    w = open_writer(out, ClassifyResult, RUN, overwrite=True)
    assert read_existing(out, ClassifyResult)[1] == []
    w.write(classify_records()[:1])
    w.close()
    assert [r["path"] for r in read_existing(out, ClassifyResult)[1]] == ["/照片/猫 咪.jpg"]


def test_overwrite_json_keeps_old_file_until_close(tmp_path):
    out = tmp_path / "r.json"
    with open_writer(out, ClassifyResult, RUN) as w:
        w.write(classify_records())
    old = out.read_bytes()
    w = open_writer(out, ClassifyResult, {**RUN, "model": "other"}, overwrite=True)
    w.write(classify_records()[:1])
    assert out.read_bytes() == old
    w.close()
    doc = json.loads(out.read_bytes())
    assert doc["run"]["model"] == "other"
    assert [r["path"] for r in doc["results"]] == ["/照片/猫 咪.jpg"]
    assert not partial_path(out).exists() and not run_sidecar_path(out).exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_write_is_flushed(tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    recs = classify_records()
    w = open_writer(out, ClassifyResult, RUN)
    w.write(recs[:2])
    # Another reader, while the writer is still open, sees the first batch complete.
    _, back = read_existing(out, ClassifyResult)
    assert back == _expected(fmt, recs[:2])
    w.write(recs[2:3])
    assert len(read_existing(out, ClassifyResult)[1]) == 3
    w.close()


def test_json_document_shape_and_run_merge(tmp_path):
    out = tmp_path / "r.json"
    w = open_writer(out, ClassifyResult, RUN)
    assert run_sidecar_path(out).exists() and partial_path(out).exists()
    w.write(classify_records())
    w.close({"images_per_s": 12.5, "finished": "2025-01-01T00:00:00"})
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert set(doc) == {"run", "results"}
    assert doc["run"]["images_per_s"] == 12.5 and doc["run"]["model"] == RUN["model"]
    assert doc["results"] == [_as_dict(r) for r in classify_records()]
    assert "猫" in out.read_text(encoding="utf-8")  # ensure_ascii=False
    assert not partial_path(out).exists() and not run_sidecar_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp files left


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_run_sidecar_written_at_open_and_close(tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    w = open_writer(out, ClassifyResult, RUN)
    side = run_sidecar_path(out)
    assert side.name == f"r.{fmt}.run.json"
    assert json.loads(side.read_text(encoding="utf-8")) == RUN
    w.close({"images_per_s": 3.0})
    assert json.loads(side.read_text(encoding="utf-8")) == {**RUN, "images_per_s": 3.0}
    assert read_existing(out, ClassifyResult)[0]["images_per_s"] == 3.0


def test_json_publish_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    with open_writer(out, ClassifyResult, RUN) as w:
        w.write(classify_records()[:1])
    old = out.read_bytes()
    w = open_writer(out, ClassifyResult, RUN, overwrite=True)
    w.write(classify_records()[1:3])

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(WwtsError, match="--resume") as info:
        w.close()
    assert "could not publish" in str(info.value)
    assert out.read_bytes() == old  # old file intact
    assert partial_path(out).exists()  # nothing lost
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    _, back = read_existing(out, ClassifyResult)
    assert back == [_as_dict(r) for r in classify_records()[1:3]]

    monkeypatch.undo()
    with open_writer(out, ClassifyResult, RUN, resume=True) as w:
        w.write(classify_records()[3:4])
    doc = json.loads(out.read_bytes())
    assert doc["results"] == [_as_dict(r) for r in classify_records()[1:4]]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_torn_jsonl_line_tolerated_and_cut_on_resume(tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    recs = classify_records()
    w = open_writer(out, ClassifyResult, RUN)
    w.write(recs[:2])
    w.abort()
    data_file = partial_path(out) if fmt == "json" else out
    with open(data_file, "ab") as fh:
        fh.write(b'{"path": "/half", "wid')
    _, back = read_existing(out, ClassifyResult)
    assert [r["path"] for r in back] == [recs[0].path, recs[1].path]

    with open_writer(out, ClassifyResult, RUN, resume=True) as w:
        w.write(recs[2:3])
    _, back = read_existing(out, ClassifyResult)
    assert back == [_as_dict(r) for r in recs[:3]]
    if fmt == "jsonl":
        assert b"/half" not in out.read_bytes()
        for line in out.read_bytes().splitlines():
            json.loads(line)


def test_jsonl_last_line_without_newline_is_dropped_on_resume(tmp_path):
    out = tmp_path / "r.jsonl"
    recs = classify_records()
    with open_writer(out, ClassifyResult, RUN) as w:
        w.write(recs[:1])
    with open(out, "ab") as fh:
        fh.write(b'{"path": "/whole-but-unterminated"}')
    assert [r["path"] for r in read_existing(out, ClassifyResult)[1]] == [recs[0].path]
    with open_writer(out, ClassifyResult, RUN, resume=True) as w:
        w.write(recs[1:2])
    lines = out.read_bytes().splitlines()
    assert [json.loads(line)["path"] for line in lines] == [recs[0].path, recs[1].path]


def test_corrupt_middle_jsonl_line_is_an_error(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_bytes(b'{"path": "a"}\nnot json\n{"path": "b"}\n')
    with pytest.raises(WwtsError, match="line 2"):
        read_existing(out, ClassifyResult)


@pytest.mark.parametrize("tail", [b'/half.jpg,\xe4\xba\xba,0.5', b'/q.jpg,"unterminated\r\nquote'])
def test_torn_csv_row_tolerated_and_cut_on_resume(tmp_path, tail):
    out = tmp_path / "r.csv"
    recs = classify_records()
    w = open_writer(out, ClassifyResult, RUN)
    w.write(recs[:2])
    w.abort()
    with open(out, "ab") as fh:
        fh.write(tail)
    assert [r["path"] for r in read_existing(out, ClassifyResult)[1]] == [recs[0].path, recs[1].path]
    with open_writer(out, ClassifyResult, RUN, resume=True) as w:
        w.write(recs[2:3])
    assert read_existing(out, ClassifyResult)[1] == _expected("csv", recs[:3])
    assert len(_raw_csv_rows(out)) == 4


def test_csv_resume_with_torn_header_starts_fresh(tmp_path):
    out = tmp_path / "r.csv"
    out.write_bytes(BOM + b"path,la")
    with open_writer(out, ClassifyResult, RUN, resume=True) as w:
        w.write(classify_records()[:1])
    assert out.read_bytes().startswith(BOM + b"path,label,score,top_k,labels,width,height,error\r\n")
    assert len(read_existing(out, ClassifyResult)[1]) == 1


def test_csv_resume_other_task_refused(tmp_path):
    out = tmp_path / "r.csv"
    with open_writer(out, CaptionResult, RUN) as w:
        w.write(caption_records())
    before = out.read_bytes()
    with pytest.raises(UsageError, match="columns"):
        open_writer(out, ClassifyResult, RUN, resume=True)
    assert out.read_bytes() == before


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("rtype", "make"), [(ClassifyResult, classify_records), (CaptionResult, caption_records)])
def test_resume_appends_without_duplicates(tmp_path, fmt, rtype, make):
    out = tmp_path / f"r.{fmt}"
    recs = make()
    with open_writer(out, rtype, RUN) as w:
        w.write(recs[:2])
    run, back = read_existing(out, rtype)
    assert run["model"] == RUN["model"]
    done = {r["path"] for r in back}
    todo = [r for r in recs if r.path not in done]
    with open_writer(out, rtype, RUN, resume=True) as w:
        w.write(todo)
    _, back = read_existing(out, rtype)
    assert back == _expected(fmt, recs)
    assert len({r["path"] for r in back}) == len(back) == len(recs)


def test_resume_without_existing_output_starts_fresh(tmp_path):
    for fmt in FORMATS:
        out = tmp_path / f"new.{fmt}"
        with open_writer(out, ClassifyResult, RUN, resume=True) as w:
            w.write(classify_records()[:1])
        assert len(read_existing(out, ClassifyResult)[1]) == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_drop_records_then_retry_keeps_each_image_once(tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    recs = classify_records()
    with open_writer(out, ClassifyResult, RUN) as w:
        w.write(recs)
    _, back = read_existing(out, ClassifyResult)
    failed = {r["path"] for r in back if r["error"]}
    assert failed == {recs[2].path, recs[5].path}
    assert drop_records(out, ClassifyResult, failed) == 2
    assert drop_records(out, ClassifyResult, failed) == 0
    _, back = read_existing(out, ClassifyResult)
    assert [r["path"] for r in back] == [r.path for r in recs if r.path not in failed]
    retried = [ClassifyResult(path=p, width=1, height=1, label="人", score=1.0, top_k=[LabelScore("人", 1.0)])
               for p in sorted(failed)]
    with open_writer(out, ClassifyResult, RUN, resume=True) as w:
        w.write(retried)
    _, back = read_existing(out, ClassifyResult)
    paths = [r["path"] for r in back]
    assert sorted(paths) == sorted(r.path for r in recs)
    assert not any(r["error"] for r in back)


def test_drop_records_on_unfinished_json_rewrites_partial(tmp_path):
    out = tmp_path / "r.json"
    recs = classify_records()
    w = open_writer(out, ClassifyResult, RUN)
    w.write(recs)
    w.abort()
    assert drop_records(out, ClassifyResult, {recs[0].path}) == 1
    assert not out.exists()
    assert [r["path"] for r in read_existing(out, ClassifyResult)[1]] == [r.path for r in recs[1:]]


def test_exception_in_block_does_not_publish_json(tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        with open_writer(out, ClassifyResult, RUN) as w:
            w.write(classify_records()[:2])
            raise KeyboardInterrupt
    assert not out.exists()
    run, back = read_existing(out, ClassifyResult)
    assert run == RUN and len(back) == 2


def test_write_checks_record_type_and_state(tmp_path):
    w = open_writer(tmp_path / "r.jsonl", ClassifyResult, RUN)
    with pytest.raises(TypeError, match="ClassifyResult"):
        w.write(caption_records())
    w.close()
    w.close()  # idempotent
    with pytest.raises(WwtsError, match="closed"):
        w.write(classify_records())


def test_read_missing_output(tmp_path):
    for fmt in FORMATS:
        assert read_existing(tmp_path / f"none.{fmt}", ClassifyResult) == (None, [])


def test_out_path_is_folder_refused(tmp_path):
    folder = tmp_path / "d.csv"
    folder.mkdir()
    with pytest.raises(UsageError, match="folder"):
        open_writer(folder, ClassifyResult, RUN, overwrite=True)


def test_writers_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, wwts.core.output; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


FAST = ("--labels", "人,车,狗", "--top-k", "2", "--dtype", "float32", "--threads", "1")
RUN_NAMED_M = {"task": "classify", "model": "m"}


def test_creating_the_output_is_atomic_with_the_existence_check(tmp_path, monkeypatch):
    """A file that appears between the check and the creation is refused, not truncated."""
    out = tmp_path / "r.jsonl"
    real = writers.make_parent

    def racing(path):
        real(path)
        out.write_text("someone else's data\n")

    monkeypatch.setattr(writers, "make_parent", racing)
    with pytest.raises(UsageError, match="already exists"):
        open_writer(out, CaptionResult, RUN_NAMED_M)
    assert out.read_text() == "someone else's data\n"


# --- disk full: the real file, the real count -------------------------------------------------


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
    w = open_writer(out, CaptionResult, RUN_NAMED_M)
    w.write([CaptionResult(path="a.jpg", caption="猫")])
    with pytest.raises(writers.WwtsError, match="cannot write results to .*x.jsonl"):
        w.write([CaptionResult(path="b.jpg", caption="狗" * 100)])
    assert w.failed and (w.written, w.written_errors) == (1, 0)
    with pytest.raises(writers.WwtsError, match="closed"):
        w.write([CaptionResult(path="c.jpg", caption="x")])
    w.close()
    assert [r["path"] for r in strict_jsonl(out)] == ["a.jpg"]
