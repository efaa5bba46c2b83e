"""``wwts search`` and ``wwts embed`` on a tiny random Chinese-CLIP (offline), through the command line
(``wwts store`` and ``--store`` are in test_store.py)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from tests.test_store import COMMON, classify, counts, jsonl, photos, wwts  # noqa: F401 (fixtures)
from wwts.core.store import content_hash


def test_search_ranks_every_image_by_similarity_computing_only_missing_embeddings(tiny_clip, photos, tmp_path,
                                                                                  counts):
    n = len(list(photos.iterdir()))
    (photos / "coffee.jpg").unlink()  # one photo not in the store yet
    assert classify(photos, "人,车", tiny_clip, tmp_path / "a.jsonl").exit_code == 0
    shutil.copy(photos / "flower.jpg", photos / "new.jpg")
    (photos / "new.jpg").write_bytes((photos / "new.jpg").read_bytes() + b"\0")
    result = wwts("search", "海边的日落", photos, "--top", 100, "--model", tiny_clip, "--out", tmp_path / "s.jsonl",
                  *COMMON)
    assert result.exit_code == 0, result.output
    assert counts["tower"] == (n - 1) + 1  # only the new photo went through the tower
    rows = jsonl(tmp_path / "s.jsonl")
    assert len(rows) == n and len({r["path"] for r in rows}) == n
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    assert [r["cached"] for r in rows].count(False) == 1


def test_search_scores_are_the_models_cosine_similarity(tiny_clip, photos, tmp_path):
    # --exact-pixels: the reference below is transformers' processor on the full image
    result = wwts("search", "一张猫的照片。", photos, "--top", 3, "--model", tiny_clip, "--out", tmp_path / "s.csv",
                  "--exact-pixels", *COMMON)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "s.csv").read_text(encoding="utf-8-sig").splitlines()
    assert lines[0] == "path,score,width,height,error" and len(lines) == 4
    from transformers import AutoModel, AutoProcessor
    from PIL import Image

    model, processor = AutoModel.from_pretrained(tiny_clip), AutoProcessor.from_pretrained(tiny_clip)
    best = lines[1].split(",")
    with torch.no_grad():
        image = model.get_image_features(**processor(images=Image.open(best[0]).convert("RGB"), return_tensors="pt"))
        text = model.get_text_features(**processor(text=["一张猫的照片。"], return_tensors="pt", padding=True))
    image, text = (getattr(x, "pooler_output", x) for x in (image, text))
    cos = torch.nn.functional.cosine_similarity(image, text).item()
    assert float(best[1]) == pytest.approx(cos, abs=1e-3)


def test_search_prints_a_table_without_out(tiny_clip, photos):
    result = wwts("search", "猫", photos, "--top", 2, "--model", tiny_clip, *COMMON)
    assert result.exit_code == 0, result.output
    assert "score" in result.output and result.output.count("photos/") >= 2


def test_embed_writes_one_row_per_image_with_hash_and_model_key(tiny_clip, photos, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    (photos / "broken.jpg").write_bytes(b"not an image")
    result = wwts("embed", photos, "--out", tmp_path / "emb.parquet", "--model", tiny_clip, *COMMON)
    assert result.exit_code == 3, result.output  # the broken file is a row with an error
    table = pq.read_table(tmp_path / "emb.parquet").to_pylist()
    files = sorted(photos.iterdir())
    assert len(table) == len(files)
    by_path = {r["path"]: r for r in table}
    assert by_path[str(photos / "broken.jpg")]["embedding"] is None and by_path[str(photos / "broken.jpg")]["error"]
    good = [r for r in table if r["error"] is None]
    for r in good:
        assert r["content_hash"] == content_hash(r["path"])
        assert abs(sum(v * v for v in r["embedding"]) - 1) < 1e-4
        assert json.loads(r["model_key"])["weights"]
    # a second export reads every embedding from the store
    again = wwts("embed", photos, "--out", tmp_path / "emb.parquet", "--overwrite", "--model", tiny_clip, *COMMON)
    assert f"{len(good)} embeddings reused" in again.output
    rows = pq.read_table(tmp_path / "emb.parquet").to_pylist()
    assert [r["embedding"] for r in rows] == [r["embedding"] for r in table]


def test_embed_without_pyarrow_is_one_line_and_exit_2(tiny_clip, photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = wwts("embed", photos, "--out", tmp_path / "emb.parquet", "--model", tiny_clip, *COMMON)
    assert result.exit_code == 2
    assert 'pip install "wwts[store]"' in result.output and len(result.output.strip().splitlines()) == 1


def test_search_and_embed_end_through_the_run_loop_on_a_device_fault(tiny_clip, photos, tmp_path, monkeypatch):
    """Search and embed share classify's run loop: a device fault mid-run is the error line, the
    summary and exit 4, and neither publishes its output."""
    from wwts.core.engine import runner
    from wwts.core.errors import DeviceFault

    real = runner.Runner.batches

    def one_batch_then_fault(self):
        for batch in real(self):
            yield batch
            raise DeviceFault("CUDA failed and cannot continue in this process: device-side assert")

    monkeypatch.setattr(runner.Runner, "batches", one_batch_then_fault)
    searched = wwts("search", "猫", photos, "--out", tmp_path / "s.jsonl", "--model", tiny_clip, *COMMON)
    assert searched.exit_code == 4, searched.output
    assert "error: CUDA failed" in searched.stderr and "done: 4 images" in searched.stderr
    assert "nothing was written" in searched.stderr and not (tmp_path / "s.jsonl").exists()
    embedded = wwts("embed", photos, "--out", tmp_path / "e.parquet", "--model", tiny_clip, *COMMON)
    assert embedded.exit_code == 4, embedded.output
    assert "nothing was written" in embedded.stderr and not (tmp_path / "e.parquet").exists()

