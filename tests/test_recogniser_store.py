"""A closed-set model's pooled feature in the embedding store (core/tasks/image_classification.py):
a second run over the same photos with other ``--labels`` or ``--top-k`` decodes nothing and runs
no image tower, only the head; its records equal a run without the store; features of another
backend / precision are kept apart. The tower is counted by wrapping ``ResNeSt.features`` (the
model itself runs); decoding by wrapping the decode pool's ``load_image``. Also: a run whose
conversion is cached never builds the torch module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import classify
from tests.test_recogniser import modelscope_folder
from wwts.core.input import pool as pool_module
from wwts.core.models import closed_set
from wwts.core.models.resnest import ResNeSt

PHOTOS = ("coffee.jpg", "rocket.jpg", "chelsea.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return modelscope_folder(tmp_path_factory.mktemp("ms-store") / "general")


@pytest.fixture
def counts(monkeypatch):
    """``{"tower": images through ResNeSt.features, "decoded": files decoded, "built": torch modules built}``."""
    seen = {"tower": 0, "decoded": 0, "built": 0}
    features, load, build = ResNeSt.features, pool_module.load_image, closed_set._resnest_module

    def counted_features(self, x):
        seen["tower"] += x.shape[0]
        return features(self, x)

    def counted_load(path, **kwargs):
        seen["decoded"] += 1
        return load(path, **kwargs)

    def counted_build(*args):
        seen["built"] += 1
        return build(*args)

    monkeypatch.setattr(ResNeSt, "features", counted_features)
    monkeypatch.setattr(pool_module, "load_image", counted_load)
    monkeypatch.setattr(closed_set, "_resnest_module", counted_build)
    return seen


def run(images, folder: Path, out: Path, *args, backend: str = "torch") -> dict:
    result = classify(*images, "--model", folder, "--out", out, "--dtype", "float32", "--backend", backend, *args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text(encoding="utf-8"))


def scores(doc: dict) -> list[dict[str, float]]:
    return [{t["label"]: t["score"] for t in rec["top_k"]} for rec in doc["results"]]


def test_second_run_with_other_labels_and_top_k_computes_nothing(folder, sample_images, tmp_path, counts):
    images = [sample_images / n for n in PHOTOS]
    first = run(images, folder, tmp_path / "a.json", "--top-k", "2")
    assert counts["tower"] == counts["decoded"] == len(images) and first["run"]["store"]
    second = run(images, folder, tmp_path / "b.json", "--labels", "咖啡,狗,火箭", "--top-k", "3")
    assert counts["tower"] == counts["decoded"] == len(images)  # nothing decoded, no tower call
    assert all(rec["cached"] for rec in second["results"])
    fresh = run(images, folder, tmp_path / "c.json", "--labels", "咖啡,狗,火箭", "--top-k", "3", "--no-store")
    assert counts["tower"] == 2 * len(images)
    for a, b in zip(scores(second), scores(fresh)):
        assert a.keys() == b.keys() and np.allclose(list(a.values()), [b[k] for k in a], atol=1e-6)
    assert [r["label"] for r in second["results"]] == [r["label"] for r in fresh["results"]]


def test_features_of_another_precision_are_not_mixed(folder, sample_images, tmp_path, counts):
    images = [sample_images / n for n in PHOTOS[:2]]
    run(images, folder, tmp_path / "a.json")
    doc = run(images, folder, tmp_path / "b.json", "--dtype", "bfloat16")
    assert counts["tower"] == 2 * len(images) and not any(rec["cached"] for rec in doc["results"])
    pytest.importorskip("openvino")
    doc = run(images, folder, tmp_path / "c.json", backend="openvino")
    assert not any(rec["cached"] for rec in doc["results"]) and doc["run"]["computed_by"] == "openvino float32"
    doc = run(images, folder, tmp_path / "d.json", "--labels", "狗,猫", backend="openvino")
    assert all(rec["cached"] for rec in doc["results"])


def test_a_cached_conversion_builds_no_torch_module(folder, sample_images, tmp_path, counts):
    pytest.importorskip("openvino")
    images = [sample_images / PHOTOS[0]]
    run(images, folder, tmp_path / "a.json", "--no-store", backend="openvino")  # converts (or finds it)
    built, tower = counts["built"], counts["tower"]
    doc = run(images, folder, tmp_path / "b.json", "--no-store", backend="openvino")
    assert counts["built"] == built and counts["tower"] == tower
    assert doc["run"]["computed_by"] == "openvino float32"
