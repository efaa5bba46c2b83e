"""ModelScope as a model source, offline: a tiny model placed in a folder laid out as
``modelscope.snapshot_download`` lays out its cache (``MODELSCOPE_CACHE/models/ORG--NAME/
snapshots/master/``, and the older ``models/ORG/NAME`` layout with dots written ``___``), loaded
through the user's code path (``--model modelscope:ORG/NAME``, ``WWTS_HUB=modelscope``)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wwts.cli.app import app
from wwts.core import ModelLoadError
from wwts.core import models

pytest.importorskip("modelscope", reason="the modelscope extra is not installed (pip install '.[modelscope]')")


@pytest.fixture
def ms_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "modelscope-cache"
    monkeypatch.setenv("MODELSCOPE_CACHE", str(cache))
    monkeypatch.delenv("WWTS_HUB", raising=False)
    return cache


def place(tiny_clip: Path, folder: Path) -> Path:
    shutil.copytree(tiny_clip, folder)
    return folder


def classify(sample_images, *args):
    return CliRunner().invoke(app, ["classify", str(sample_images / "coffee.jpg"), "--labels", "猫,狗",
                                    "--dtype", "float32", *args])


def test_modelscope_prefix_reads_its_cache(tiny_clip, sample_images, ms_cache, tmp_path):
    folder = place(tiny_clip, ms_cache / "models" / "test-org--tiny.clip" / "snapshots" / "master")
    assert models.resolve("modelscope:test-org/tiny.clip") == str(folder)
    done = classify(sample_images, "--model", "modelscope:test-org/tiny.clip", "--out", str(tmp_path / "r.json"))
    assert done.exit_code == 0, done.output
    doc = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert doc["run"]["model"] == "modelscope:test-org/tiny.clip" and len(doc["results"]) == 1


def test_wwts_hub_modelscope_and_the_older_layout(tiny_clip, sample_images, ms_cache, monkeypatch, tmp_path):
    folder = place(tiny_clip, ms_cache / "models" / "test-org" / "tiny___clip")  # modelscope <= 1.37
    monkeypatch.setenv("WWTS_HUB", "modelscope")
    assert models.resolve("test-org/tiny.clip") == str(folder)
    done = classify(sample_images, "--model", "test-org/tiny.clip")
    assert done.exit_code == 0, done.output
    assert models.resolve(str(tiny_clip)) == str(tiny_clip.resolve())  # a local folder stays local


def test_errors_say_what_to_do(tiny_clip, sample_images, ms_cache, monkeypatch):
    done = classify(sample_images, "--model", "modelscope:test-org/missing")
    assert done.exit_code == 2 and "not in ModelScope's cache" in done.output and "HF_HUB_OFFLINE" in done.output
    pipeline = ms_cache / "models" / "damo--pipeline" / "snapshots" / "master"
    pipeline.mkdir(parents=True)
    (pipeline / "configuration.json").write_text("{}")
    done = classify(sample_images, "--model", "modelscope:damo/pipeline")
    assert done.exit_code == 2 and "not in transformers format" in done.output
    assert classify(sample_images, "--model", "modelscope:no-slash").exit_code == 2
    monkeypatch.setenv("WWTS_HUB", "gitee")
    assert "valid values are huggingface and modelscope" in classify(sample_images, "--model", "a/b").output
    monkeypatch.delenv("WWTS_HUB")
    monkeypatch.setitem(sys.modules, "modelscope.hub.snapshot_download", None)  # as if not installed
    done = classify(sample_images, "--model", "modelscope:test-org/any")
    assert done.exit_code == 2 and "pip install 'wwts[modelscope]'" in done.output


def test_hub_unreachable_message_mentions_modelscope(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(models.hub, "hub_status", lambda timeout: {"reachable": False, "endpoint": "https://x",
                                                                   "detail": "no answer"})
    with pytest.raises(ModelLoadError, match=r"--model modelscope:ORG/NAME or WWTS_HUB=modelscope"):
        models.download("org/not-cached")


def test_doctor_reports_modelscope(ms_cache):
    done = CliRunner().invoke(app, ["doctor", "--json"])
    assert done.exit_code == 0, done.output
    ms = json.loads(done.output)["models"]["modelscope"]
    assert ms["installed"] and ms["cache_dir"] == str(ms_cache)
    assert ms["checked"] is False and "offline" in ms["detail"]  # the suite is offline: not contacted
    text = CliRunner().invoke(app, ["doctor"]).output
    assert "ModelScope: https://modelscope.cn offline mode" in text
