"""Results in JSON are strict JSON (``core/output/json_format.py``): a non-finite score never
becomes ``NaN`` / ``Infinity`` in a file, it becomes an error record, in a new run, a resumed one and
one through the command line."""

from __future__ import annotations

import math

import pytest

from tests.helpers import classify, strict_json, strict_jsonl
from wwts.core.output import ClassifyResult, LabelScore, open_writer, read_existing, run_sidecar_path


FAST = ("--labels", "人,车,狗", "--top-k", "2", "--dtype", "float32", "--threads", "1")
RUN = {"task": "classify", "model": "m"}


# --- never NaN / Infinity in JSON --------------------------------------------------------------


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
