"""End-to-end ``wwts caption`` through the CLI on tiny random BLIP and Qwen3-VL models (offline)."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from wwts.cli.app import app
from wwts.core import models

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    from tests.tiny_caption_models import build_tiny_blip

    return build_tiny_blip(tmp_path_factory.mktemp("caption") / "tiny-blip")


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    from tests.tiny_caption_models import build_tiny_chat_vlm

    return build_tiny_chat_vlm(tmp_path_factory.mktemp("caption") / "tiny-qwen3-vl", family="qwen3_vl")


def _records(out):
    if out.suffix == ".csv":
        raw = out.read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf")
        rows = list(csv.DictReader(raw.decode("utf-8-sig").splitlines()))
        assert list(rows[0]) == ["path", "caption", "width", "height", "error"]
        return rows
    if out.suffix == ".json":
        doc = json.loads(out.read_text(encoding="utf-8"))
        assert doc["run"]["task"] == "caption" and doc["run"]["max_new_tokens"] == 5
        return doc["results"]
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("ext", ["csv", "json", "jsonl"])
def test_blip_one_caption_per_sample_image(tiny_blip, sample_images, tmp_path, ext):
    out = tmp_path / f"c.{ext}"
    result = runner.invoke(app, ["caption", str(sample_images), "--model", str(tiny_blip),
                                 "--out", str(out), "--max-new-tokens", "5", "-b", "4"])
    assert result.exit_code == 0, result.output
    records = _records(out)
    images = [p for p in sample_images.iterdir() if p.suffix in (".jpg", ".png")]
    assert len(records) == len(images)
    for rec in records:
        assert isinstance(rec["caption"], str) and not rec["error"]


def test_chat_model_lang_zh(tiny_chat, sample_images, tmp_path):
    out = tmp_path / "c.jsonl"
    result = runner.invoke(app, ["caption", str(sample_images), "--lang", "zh", "--model", str(tiny_chat),
                                 "--out", str(out), "--max-new-tokens", "4", "-b", "3"])
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert len(records) == sum(1 for p in sample_images.iterdir() if p.suffix in (".jpg", ".png"))
    assert all(isinstance(r["caption"], str) and r["error"] is None for r in records)
    assert all("用一句话描述这张图片" not in r["caption"] for r in records)  # the prompt is not echoed
    run = json.loads(out.with_name("c.jsonl.run.json").read_text(encoding="utf-8"))
    assert run["prompt"] == "用一句话描述这张图片。"


def test_caption_usage_errors(tiny_blip, sample_images):
    result = runner.invoke(app, ["caption", str(sample_images), "--model", str(tiny_blip), "--lang", "fr"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["caption", str(sample_images), "--model", str(tiny_blip),
                                 "--min-new-tokens", "9", "--max-new-tokens", "3"])
    assert result.exit_code == 2 and "--min-new-tokens" in result.stderr


# -- --lang zh with a model that takes no instruction -----------------------------------------------


def test_lang_zh_with_blip_says_it_captions_in_its_own_language(tiny_blip, sample_images):
    from typer.testing import CliRunner

    from wwts.cli.app import app

    result = CliRunner().invoke(app, ["caption", str(sample_images / "astronaut.jpg"), "--lang", "zh",
                                      "-m", str(tiny_blip), "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if "--lang zh" in line]
    assert len(warning) == 1, result.stderr
    assert "takes no instruction" in warning[0] and models.default_model("caption", "zh") in warning[0]
