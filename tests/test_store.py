"""The embedding store (``core.store``) through the user's code paths: ``wwts classify`` twice,
``wwts search``, ``wwts embed`` and ``wwts store``, on a tiny random Chinese-CLIP (offline).

The image tower is counted by wrapping the model class's ``get_image_features`` (the model itself
runs); decoding is counted by wrapping the decode pool's ``load_image``. Runs pin ``--backend
torch`` (no conversion) and ``--dtype float32`` (numbers are compared).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from wwts.cli.app import app
from wwts.core.input import pool as pool_module
from wwts.core.store import (APPLICATION_ID, NullStore, SqliteStore, StoredImage, TextKey, content_hash, default_store_dir,
                             model_key)

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--device", "cpu", "--dtype", "float32", "--backend", "torch", "--batch-size", "4"]


def wwts(*args):
    """``wwts ARGS...`` in-process (paths may be ``Path`` objects)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def classify(photos, labels, model, out, *extra):
    return wwts("classify", photos, "--labels", labels, "--model", model, "--out", out, "--overwrite",
                *COMMON, *extra)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def photos(tmp_path, sample_images) -> Path:
    folder = tmp_path / "photos"
    shutil.copytree(sample_images, folder, ignore=shutil.ignore_patterns("*.md"))
    return folder


@pytest.fixture
def counts(monkeypatch):
    """``{"tower": images through the image tower, "decoded": files decoded}``."""
    import transformers

    seen = {"tower": 0, "decoded": 0}
    tower = transformers.ChineseCLIPModel.get_image_features
    load = pool_module.load_image

    def counted_tower(self, *args, **kwargs):
        pixel_values = kwargs.get("pixel_values", args[0] if args else None)
        seen["tower"] += pixel_values.shape[0]
        return tower(self, *args, **kwargs)

    def counted_load(path, **kwargs):
        seen["decoded"] += 1
        return load(path, **kwargs)

    monkeypatch.setattr(transformers.ChineseCLIPModel, "get_image_features", counted_tower)
    monkeypatch.setattr(pool_module, "load_image", counted_load)
    return seen


def store_files() -> list[Path]:
    return sorted(default_store_dir().glob("*.sqlite"))


def strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "cached"} for r in records]


def assert_same_records(got: list[dict], want: list[dict]) -> None:
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(strip(got), strip(want)):
        assert {k: v for k, v in g.items() if k not in ("score", "top_k")} == \
               {k: v for k, v in w.items() if k not in ("score", "top_k")}
        assert g["score"] == pytest.approx(w["score"], abs=1e-5)
        assert [t["label"] for t in g["top_k"]] == [t["label"] for t in w["top_k"]] or \
            max(t["score"] for t in g["top_k"]) - min(t["score"] for t in g["top_k"]) < 1e-4


# --- the second run ---------------------------------------------------------------------------


def test_second_run_with_new_labels_reads_every_embedding_from_the_store(tiny_clip, photos, tmp_path, counts):
    n = len(list(photos.iterdir()))
    first = classify(photos, "人,车,动物", tiny_clip, tmp_path / "a.jsonl")
    assert first.exit_code == 0, first.output
    assert counts == {"tower": n, "decoded": n}
    assert all(r["cached"] is False for r in jsonl(tmp_path / "a.jsonl"))

    second = classify(photos, "猫,狗,花,建筑", tiny_clip, tmp_path / "b.jsonl")
    assert second.exit_code == 0, second.output
    assert counts == {"tower": n, "decoded": n}  # nothing decoded, no image tower call
    assert f"{n} embeddings reused from the store" in second.output
    cached = jsonl(tmp_path / "b.jsonl")
    assert all(r["cached"] is True for r in cached) and all(r["width"] and r["height"] for r in cached)

    fresh = classify(photos, "猫,狗,花,建筑", tiny_clip, tmp_path / "c.jsonl", "--no-store")
    assert fresh.exit_code == 0, fresh.output
    assert counts["tower"] == 2 * n
    assert_same_records(cached, jsonl(tmp_path / "c.jsonl"))
    run = json.loads((tmp_path / "b.jsonl.run.json").read_text(encoding="utf-8"))
    assert run["cached"] == n and run["store"] == str(store_files()[0])


def test_label_features_are_stored_and_reused(tiny_clip, photos, tmp_path, monkeypatch):
    import transformers

    calls = []
    text = transformers.ChineseCLIPModel.get_text_features
    monkeypatch.setattr(transformers.ChineseCLIPModel, "get_text_features",
                        lambda self, *a, **kw: calls.append(kw["input_ids"].shape[0]) or text(self, *a, **kw))
    assert classify(photos, "人,车", tiny_clip, tmp_path / "a.jsonl", "--prompt", "一张{}的照片。").exit_code == 0
    assert sum(calls) == 2
    assert classify(photos, "人,车,猫", tiny_clip, tmp_path / "b.jsonl", "--prompt", "一张{}的照片。").exit_code == 0
    assert sum(calls) == 3  # only 猫 was encoded


@pytest.mark.parametrize("change", ["dtype", "model", "bytes"])
def test_what_invalidates_an_embedding(tiny_clip, photos, tmp_path, counts, change):
    n = len(list(photos.iterdir()))
    assert classify(photos, "人,车", tiny_clip, tmp_path / "a.jsonl").exit_code == 0
    model, extra, expect = tiny_clip, [], n
    if change == "dtype":
        extra = ["--dtype", "bfloat16"]
    elif change == "model":
        from tests.tiny_models import build_tiny_chinese_clip

        model = build_tiny_chinese_clip(tmp_path / "other-model", seed=1)
    else:
        photo = photos / "coffee.jpg"
        photo.write_bytes(photo.read_bytes() + b"\0")  # other bytes, same picture
        expect = 1
    result = classify(photos, "人,车", model, tmp_path / "b.jsonl", *extra)
    assert result.exit_code == 0, result.output
    assert counts["tower"] == n + expect
    assert len(store_files()) == (1 if change == "bytes" else 2)


def test_touching_mtime_does_not_recompute(tiny_clip, photos, tmp_path, counts):
    n = len(list(photos.iterdir()))
    assert classify(photos, "人,车", tiny_clip, tmp_path / "a.jsonl").exit_code == 0
    later = time.time() + 100
    for photo in photos.iterdir():
        os.utime(photo, (later, later))
    assert classify(photos, "人,车", tiny_clip, tmp_path / "b.jsonl").exit_code == 0
    assert counts == {"tower": n, "decoded": n}
    with sqlite3.connect(store_files()[0]) as conn:  # the path index took the new mtimes
        mtimes = sorted(row[0] for row in conn.execute("SELECT mtime_ns FROM paths"))
    assert mtimes == sorted(p.stat().st_mtime_ns for p in photos.iterdir())


def test_duplicate_files_are_computed_once(tiny_clip, tmp_path, sample_images, counts):
    folder = tmp_path / "dups"
    folder.mkdir()
    for i in range(3):
        shutil.copy(sample_images / "coffee.jpg", folder / f"copy{i}.jpg")
    shutil.copy(sample_images / "flower.jpg", folder / "flower.jpg")
    assert classify(folder, "人,车", tiny_clip, tmp_path / "a.jsonl").exit_code == 0
    assert counts["tower"] == 2
    records = jsonl(tmp_path / "a.jsonl")
    assert records[0]["score"] == records[1]["score"] == records[2]["score"]


def test_model_key_changes_with_each_part():
    base = {"dtype": "torch.float32", "backend": "torch", "input_size": 224, "preprocess": {"crop_size": 224},
            "decode_recipe": 1, "weights": {"files": "abc"}}
    key = model_key("m", base)
    assert model_key("m", dict(base)) == key and model_key("renamed", base).digest == key.digest
    for part, value in [("dtype", "torch.bfloat16"), ("backend", "openvino"), ("input_size", 336),
                        ("preprocess", {"crop_size": 336}), ("decode_recipe", 2), ("weights", {"files": "abd"})]:
        assert model_key("m", {**base, part: value}).digest != key.digest, part


# --- the store file ---------------------------------------------------------------------------


def _key():
    return model_key("tiny", {"weights": {"files": "x"}, "dtype": "float32"})


def test_sqlite_store_round_trip_and_path_index(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"not really a jpeg, but bytes to hash")
    store = SqliteStore(tmp_path / "s.sqlite", _key())
    key, found = store.lookup(photo)
    assert key == content_hash(photo) and found is None
    store.remember(key, 40, 30, 1, "a note")
    store.put({key: torch.tensor([0.6, 0.8]), TextKey("一张猫的照片。", "猫", "{}"): torch.tensor([1.0, 0.0]),
               "nan": torch.tensor([float("nan"), 0.0])})
    again, found = store.lookup(photo)
    assert isinstance(found, StoredImage) and (found.width, found.height, found.note) == (40, 30, "a note")
    assert found.vector.tolist() == torch.tensor([0.6, 0.8]).tolist()  # float32, as stored
    assert set(store.get([key, "nan", TextKey("一张猫的照片。", "猫", "{}")])) == {key, TextKey("一张猫的照片。", "猫", "{}")}
    store.close()
    with sqlite3.connect(tmp_path / "s.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


@pytest.mark.parametrize("content", [b"garbage, not a database" * 100, "foreign"])
def test_a_corrupt_or_foreign_store_file_is_set_aside_and_the_run_goes_on(tiny_clip, photos, tmp_path, counts,
                                                                         content):
    assert classify(photos, "人,车", tiny_clip, tmp_path / "a.jsonl").exit_code == 0
    (path,) = store_files()
    for side in ("-wal", "-shm"):
        Path(str(path) + side).unlink(missing_ok=True)
    if content == "foreign":
        path.unlink()
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE notes (x)")
    else:
        path.write_bytes(content)
    result = classify(photos, "人,车", tiny_clip, tmp_path / "b.jsonl")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "set aside" in line]
    assert len(lines) == 1 and path.name in lines[0]
    assert len(list(path.parent.glob(path.name + (".corrupt-*" if content != "foreign" else ".foreign-*")))) == 1
    n = len(list(photos.iterdir()))
    assert counts["tower"] == 2 * n  # computed again, into a new store
    assert classify(photos, "人,车", tiny_clip, tmp_path / "c.jsonl").exit_code == 0
    assert counts["tower"] == 2 * n


_WRITER = """
import sys, torch
from pathlib import Path
from wwts.core.store import SqliteStore, model_key
store = SqliteStore(Path(sys.argv[1]), model_key("tiny", {"weights": {"files": "x"}, "dtype": "float32"}))
i = 0
while True:
    store.put({f"{sys.argv[2]}-{i}-{j}": torch.rand(512) for j in range(50)})
    i += 1
    if i == 5:
        print("writing", flush=True)
"""


def _writer(path: Path, tag: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag], stdout=subprocess.PIPE, env=env)


@pytest.mark.slow
def test_two_processes_write_at_once_and_kill_9_leaves_a_usable_store(tmp_path):
    path = tmp_path / "s.sqlite"
    writers = [_writer(path, "a"), _writer(path, "b")]
    try:
        for w in writers:
            assert w.stdout.readline().strip() == b"writing"
        time.sleep(1.0)
    finally:
        for w in writers:
            w.kill()  # SIGKILL mid-transaction
            w.wait()
    store = SqliteStore(path, _key())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tags = {row[0].split("-")[0] for row in conn.execute("SELECT hash FROM images")}
    assert tags == {"a", "b"}
    store.put({"after": torch.ones(512)})
    assert "after" in store.get(["after"])


@pytest.mark.slow
def test_two_wwts_processes_at_once_share_the_store(tiny_clip, photos, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "wwts.cli.app", "classify", str(photos), "--labels", "人,车", "--model",
           str(tiny_clip), "-q", *COMMON]
    procs = [subprocess.Popen([*cmd, "--out", str(tmp_path / f"{i}.jsonl")], env=env, stderr=subprocess.PIPE)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    assert strip(jsonl(tmp_path / "0.jsonl")) == strip(jsonl(tmp_path / "1.jsonl"))
    (path,) = store_files()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM images").fetchone()[0] == len(list(photos.iterdir()))


def test_store_info_prune_and_clear(tiny_clip, photos, tmp_path):
    n = len(list(photos.iterdir()))
    assert classify(photos, "人,车", tiny_clip, tmp_path / "a.jsonl").exit_code == 0
    facts = json.loads(wwts("store", "info", "--json").output)
    (store,) = facts["stores"]
    assert store["photos"] == n and store["dtype"] == "float32" and store["oldest"] and store["label_prompts"] >= 2
    assert "photos" in wwts("store", "info").output
    (photos / "coffee.jpg").unlink()
    pruned = wwts("store", "prune")
    assert pruned.exit_code == 0 and "1 paths and 1 photo embeddings removed" in pruned.output
    assert json.loads(wwts("store", "info", "--json").output)["stores"][0]["photos"] == n - 1
    cleared = wwts("store", "clear")
    assert cleared.exit_code == 0 and not store_files()


def test_store_option_chooses_the_folder_and_no_store_writes_none(tiny_clip, photos, tmp_path):
    assert classify(photos, "人,车", tiny_clip, tmp_path / "a.jsonl", "--store", tmp_path / "mine").exit_code == 0
    assert len(list((tmp_path / "mine").glob("*.sqlite"))) == 1 and not store_files()
    assert classify(photos, "人,车", tiny_clip, tmp_path / "b.jsonl", "--no-store").exit_code == 0
    assert not store_files()


def test_encode_through_computes_each_missing_key_once_in_batches_and_remembers_it():
    import numpy as np

    from wwts.core.store import encode_through

    class Remembering(NullStore):  # a store that holds what it is given, and counts the asks
        def __init__(self, held):
            self.held = dict(held)

        def get(self, keys):
            return {k: self.held[k] for k in keys if k in self.held}

        def put(self, items):
            self.held.update(items)

    store = Remembering({"b": np.full(2, 9.0, np.float32)})
    calls = []

    def encode(rows):
        calls.append(list(rows))
        return np.array([[float(r), float(r)] for r in rows], np.float32)

    keys = ["a", "b", "c", "a", "d", "e"]
    out = encode_through(store, keys, encode, batch=2)
    assert calls == [[0, 2], [4, 5]]  # "b" stored already, the second "a" is the first's
    assert [v[0] for v in out] == [0.0, 9.0, 2.0, 0.0, 4.0, 5.0]
    assert set(store.held) == {"a", "b", "c", "d", "e"}
    calls.clear()
    assert [v[0] for v in encode_through(store, keys, encode)] == [0.0, 9.0, 2.0, 0.0, 4.0, 5.0] and calls == []
    assert [v[0] for v in encode_through(NullStore(), ["x", "x"], encode)] == [0.0, 0.0] and calls == [[0]]
