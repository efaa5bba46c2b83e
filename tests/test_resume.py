"""--resume and --retry-failed (``core/output/resume.py``): a resumed run redoes no finished image and keeps each
image once, under any spelling of its path; settings that differ from the first run are refused, each
named; an unreadable output is refused before the model loads."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import (FORMATS, RUN, classify, classify_records, encoded, no_traceback, noise_image,
                           one_error_line, read_jsonl)
from wwts.core.errors import UsageError
from wwts.core.output import (RESUME_KEYS, ClassifyResult, LabelScore, check_settings, drop_records, open_writer,
                              pending_paths, plan_resume, read_existing, run_sidecar_path)


LABELS = "人,车,猫"
#: float32 and one torch thread: deterministic scores, and cheap on the 2-core test machine.
FAST = ("--labels", LABELS, "--top-k", "3", "--dtype", "float32", "--threads", "1")
NON_UTF8_NAME = b"photo-\xff\xfe-\xe9t\xe9.png"  # Latin-1 bytes: not valid UTF-8


def noise(size=(64, 48)) -> Image.Image:
    """``noise_image`` at this module's default size."""
    return noise_image(size)


# --- results are never lost: resume / retry / refusing to overwrite -----------------------------------


def test_resume_after_a_torn_last_line(tiny_clip, six, tmp_path):
    out = tmp_path / "r.jsonl"
    assert classify(six, *FAST, "--model", tiny_clip, "--out", out).exit_code == 0
    raw = out.read_bytes()
    lines = raw.splitlines(keepends=True)
    torn = b"".join(lines[:4]) + lines[4][: len(lines[4]) // 2]  # record 5 half-written, 6 missing
    out.write_bytes(torn)
    result = classify(six, *FAST, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    after = out.read_bytes()
    assert after.startswith(b"".join(lines[:4]))  # records already done are kept as they were
    records = read_jsonl(out)
    assert sorted(Path(r["path"]).name for r in records) == [f"p{i}.png" for i in range(6)]
    assert all(r["label"] and r["error"] is None for r in records)
    # nothing left to do: a second --resume changes nothing
    result = classify(six, *FAST, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 0 and "nothing to do" in result.stderr
    assert out.read_bytes() == after


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_retry_failed_reprocesses_only_the_broken_image(tiny_clip, six, tmp_path, fmt):
    broken = six / "p3.png"
    good_bytes = broken.read_bytes()
    broken.write_bytes(good_bytes[: len(good_bytes) // 3])
    out = tmp_path / f"r.{fmt}"
    result = classify(six, *FAST, "--model", tiny_clip, "--out", out)
    assert result.exit_code == 3, result.output
    before = read_records(out)
    assert [Path(r["path"]).name for r in before if r["error"]] == ["p3.png"]
    broken.write_bytes(good_bytes)  # the user fixed the file
    result = classify(six, *FAST, "--model", tiny_clip, "--out", out, "--retry-failed")
    assert result.exit_code == 0, result.output
    after = read_records(out)
    by_name = {Path(r["path"]).name: r for r in after}
    assert len(after) == 6 and sorted(by_name) == [f"p{i}.png" for i in range(6)]
    assert by_name["p3.png"]["error"] in (None, "") and by_name["p3.png"]["label"]
    # the others were not processed again: their records are unchanged
    old = {Path(r["path"]).name: r for r in before}
    for name in by_name.keys() - {"p3.png"}:
        assert by_name[name] == old[name]


def read_records(out: Path) -> list[dict]:
    if out.suffix == ".jsonl":
        return read_jsonl(out)
    if out.suffix == ".json":
        return json.loads(out.read_text(encoding="utf-8"))["results"]
    import csv

    return list(csv.DictReader(out.read_text(encoding="utf-8-sig").splitlines()))


@pytest.mark.parametrize("change", [
    ("--labels", "人,车,狗"),
    ("--prompt", "{}"),
    ("--dtype", "bfloat16"),
    ("--model", "COPY"),
    ("--quantize", "int8"),
    ("--backend", "onnxruntime"),
], ids=["labels", "prompt", "dtype", "model", "quantize", "backend"])
def test_resume_with_other_settings_is_refused(tiny_clip, six, tmp_path, change, monkeypatch):
    if change[0] == "--dtype":
        # torch pinned: its bf16 autocast changes the numbers; OpenVINO on a CPU without native bf16
        # runs float32 for either request, so a resume there is not a change of settings
        monkeypatch.setenv("WWTS_BACKEND", "torch")
    out = tmp_path / "r.jsonl"
    assert classify(six, *FAST, "--model", tiny_clip, "--out", out).exit_code == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3]))  # an interrupted run: 3 of 6 done
    before = out.read_bytes()
    args = dict(zip(FAST[::2], FAST[1::2]), **{"--model": str(tiny_clip)})
    key, value = change
    if value == "COPY":
        value = str(shutil.copytree(tiny_clip, tmp_path / "other-model"))
    args[key] = value
    result = classify(six, *[x for kv in args.items() for x in kv], "--out", out, "--resume")
    assert result.exit_code == 2, result.output
    assert key.lstrip("-") in result.stderr and "other settings" in result.stderr
    assert out.read_bytes() == before
    no_traceback(result.output)


def test_resume_of_a_finished_run_with_other_labels_is_refused(tiny_clip, six, tmp_path):
    out = tmp_path / "r.jsonl"
    assert classify(six, *FAST, "--model", tiny_clip, "--out", out).exit_code == 0
    result = classify(six, *FAST[2:], "--labels", "人,车,狗", "--model", tiny_clip,
                      "--out", out, "--resume")
    assert result.exit_code == 2, result.output


def test_csv_resume_with_odd_names_keeps_each_image_once(tiny_clip, tmp_path, monkeypatch):
    """Names that CSV must quote, escape or defuse still match their record when resuming."""
    folder = tmp_path / "odd"
    folder.mkdir()
    names = [b"=cmd.png", "猫.png".encode(), b"new\nline.png", NON_UTF8_NAME, b"back\\ud800slash.png",
             b"'quote.png", b'comma,"q".png', b"ok.png"]
    for name in names:
        with open(os.path.join(os.fsencode(folder), name), "wb") as fh:
            fh.write(encoded(noise((24, 24)), "PNG"))
    monkeypatch.chdir(folder)
    out = tmp_path / "r.csv"
    assert classify(".", *FAST, "--model", tiny_clip, "--out", out).exit_code == 0
    full = out.read_bytes()
    full.decode("utf-8")
    rows = full.split(b"\r\n")  # rows end in CRLF; the quoted name keeps its bare LF
    assert len(rows) == 1 + len(names) + 1 and rows[-1] == b""
    out.write_bytes(b"\r\n".join(rows[:6]) + b"\r\n" + rows[6][:9])  # 5 records and a torn 6th
    result = classify(".", *FAST, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    from wwts.core.output.records import ClassifyResult
    from wwts.core.output import read_existing

    _, records = read_existing(out, ClassifyResult)
    assert sorted(os.fsencode(r["path"]) for r in records) == sorted(names)  # each once, bytes intact
    assert all(r["label"] for r in records)


FAST_TOP_2 = ("--labels", "人,车,狗", "--top-k", "2", "--dtype", "float32", "--threads", "1")


# --- --resume recognises a file under any spelling --------------------------------------------


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
    assert classify("ex", *FAST_TOP_2, "--model", tiny_clip, "--out", out).exit_code == 0
    _, records = read_existing(out, ClassifyResult)
    assert len(records) == 6
    # keep 2 records, as if the run had been interrupted
    assert drop_records(out, ClassifyResult, {r["path"] for r in records[2:]}) == 4
    result = classify(str(tmp_path / "ex"), *FAST_TOP_2, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    _, records = read_existing(out, ClassifyResult)
    names = sorted(Path(r["path"]).name for r in records)
    assert names == [f"p{i}.png" for i in range(6)], names  # each image once, not 2 + 6
    result = classify("./ex/../ex", *FAST_TOP_2, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 0 and "nothing to do" in result.stderr


@pytest.mark.parametrize("name,content", [
    ("r.jsonl", b'{"path": "a.png"}\nnot json\n{"path": "b.png"}\n'),
    ("r.json", b'{"run": {}, "results": [tor'),
    ("r.csv", b"\xef\xbb\xbfpath,label,score,top_k,labels,width,height,error\r\na.png,x,notanumber,,,1,1,\r\nb.png,x,0.5,,,1,1,\r\n"),
])
def test_a_corrupt_output_on_resume_exits_2_before_the_model_loads(tiny_clip, six, tmp_path, load_spy,
                                                                   name, content):
    out = tmp_path / name
    out.write_bytes(content)
    result = classify(six, *FAST_TOP_2, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 2, result.output
    assert str(out) in one_error_line(result)
    assert load_spy == [] and out.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ex", name])  # lock removed


def _out(tmp_path: Path, fmt: str) -> Path:
    return tmp_path / "结果" / f"results.{fmt}"


@pytest.fixture
def wwts_log(caplog, monkeypatch):
    """Records of the ``wwts`` logger, even when an earlier CLI test stopped its propagation."""
    monkeypatch.setattr(logging.getLogger("wwts"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="wwts"):
        yield caplog


@pytest.mark.parametrize("fmt", FORMATS)
def test_plan_resume_skips_done_images_and_retries_failed_ones(tmp_path, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    out = _out(tmp_path, fmt)
    done = [ClassifyResult(path="a.jpg", label="人", score=0.5, top_k=[LabelScore("人", 0.5)]),
            ClassifyResult(path="b.jpg", error="truncated: image file is truncated")]
    w = open_writer(out, ClassifyResult, RUN)
    w.write(done)
    w.abort()  # an interrupted run: .json keeps its partial file
    found = [Path("a.jpg"), tmp_path / "b.jpg", Path("c.jpg")]
    settings = {k: RUN[k] for k in ("task", "model", "labels", "prompt")}

    plan = plan_resume(out, ClassifyResult, found, settings, retry_failed=False)
    assert plan.paths == [Path("c.jpg")]
    assert plan.old_run == RUN and plan.failed == {"b.jpg"}

    plan = plan_resume(out, ClassifyResult, found, settings, retry_failed=True)
    assert plan.paths == [tmp_path / "b.jpg", Path("c.jpg")]  # any spelling of b.jpg
    assert plan.failed == {"b.jpg"}


def test_plan_resume_without_an_output_plans_everything(tmp_path):
    found = [tmp_path / "a.jpg", tmp_path / "a.jpg", tmp_path / "b.jpg"]
    plan = plan_resume(tmp_path / "none.jsonl", ClassifyResult, found, {"task": "caption"}, retry_failed=True)
    assert plan.paths == [tmp_path / "a.jpg", tmp_path / "b.jpg"]  # each image once
    assert plan.old_run is None and plan.failed == set()


def test_plan_resume_refuses_other_settings(tmp_path):
    out = tmp_path / "r.csv"
    with open_writer(out, ClassifyResult, RUN) as w:
        w.write(classify_records()[:1])
    other = {"task": "classify", "model": RUN["model"], "labels": ["猫"], "prompt": RUN["prompt"]}
    with pytest.raises(UsageError) as info:
        plan_resume(out, ClassifyResult, [tmp_path / "x.jpg"], other, retry_failed=False)
    assert str(info.value) == (f"{out} was made with other settings (labels: ['人', '车'] in the file, "
                               "['猫'] now): use another --out, or --overwrite to start over")


def test_plan_resume_warns_when_the_settings_file_is_missing(tmp_path, wwts_log):
    out = tmp_path / "r.jsonl"
    with open_writer(out, ClassifyResult, RUN) as w:
        w.write(classify_records()[:1])
    run_sidecar_path(out).unlink()
    plan = plan_resume(out, ClassifyResult, [tmp_path / "x.jpg"], {"labels": ["猫"]}, retry_failed=False)
    assert plan.old_run is None and plan.paths == [tmp_path / "x.jpg"]
    assert [r.getMessage() for r in wwts_log.records] == [
        f"{out} has no run settings file next to it: cannot check that it was made with the same "
        "model and labels"]


def test_check_settings_names_each_differing_setting(tmp_path):
    out = tmp_path / "r.jsonl"
    check_settings(out, None, {"task": "classify"})  # nothing stored: nothing to compare
    check_settings(out, {"task": "classify", "device": "cpu"}, {"task": "classify", "device": "cuda"})
    old = {"task": "classify", "model": "m", "top_k": 3}
    with pytest.raises(UsageError, match=r"model: 'm' in the file, 'n' now; top_k: 3 in the file, 5 now"):
        check_settings(out, old, {"task": "classify", "model": "n", "top_k": 5, "dtype": None})
    assert "device" not in RESUME_KEYS and {"task", "model", "labels", "prompt"} <= set(RESUME_KEYS)
    # a setting an older wwts did not record cannot differ (an output from before --multi-label)
    check_settings(out, {"task": "classify", "model": "m"}, {"task": "classify", "model": "m", "multi_label": False})
