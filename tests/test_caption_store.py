"""The caption store through ``wwts caption`` on a tiny random BLIP (offline): a second run over the
same photos generates nothing and loads no model; other generation settings or another model
compute their own captions; a changed photo is captioned again, alone. On torch (the counts are of
its generation calls); tests/test_caption_openvino.py has the store on OpenVINO."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from wwts.cli.app import app
from wwts.core import models
from wwts.core.tasks import caption

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_blips(tmp_path_factory):
    from tests.tiny_caption_models import build_tiny_blip

    root = tmp_path_factory.mktemp("caption-store")
    return build_tiny_blip(root / "blip-a"), build_tiny_blip(root / "blip-b")


@pytest.fixture
def photos(six, tmp_path):
    """Three of the six noise PNGs."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted(six.iterdir())[:3]:
        shutil.copyfile(path, folder / path.name)
    return folder


@pytest.fixture
def calls(monkeypatch):
    """Counts the images each generation call is given (wwts' greedy loop and ``generate``)."""
    counted = {"greedy": 0, "generate": 0}
    real_greedy = caption.blip_greedy

    def greedy(model, pixel_values, *args, **kwargs):
        counted["greedy"] += pixel_values.shape[0]
        return real_greedy(model, pixel_values, *args, **kwargs)

    from transformers import BlipForConditionalGeneration

    real_generate = BlipForConditionalGeneration.generate

    def generate(self, pixel_values, *args, **kwargs):
        counted["generate"] += pixel_values.shape[0]
        return real_generate(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(caption, "blip_greedy", greedy)
    monkeypatch.setattr(BlipForConditionalGeneration, "generate", generate)
    return counted


def _run(photos, model, out, *extra):
    result = runner.invoke(app, ["caption", str(photos), "--model", str(model), "--out", str(out),
                                 "--max-new-tokens", "5", "--overwrite", "--backend", "torch", *extra])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    return {r["path"]: r["caption"] for r in doc["results"]}, doc["run"]


def test_second_run_generates_nothing_and_loads_no_model(tiny_blips, photos, tmp_path, calls, monkeypatch):
    first, run = _run(photos, tiny_blips[0], tmp_path / "a.json")
    assert calls["greedy"] == len(first) and run["store"]
    calls["greedy"] = 0

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load", no_load)
    second, run2 = _run(photos, tiny_blips[0], tmp_path / "b.json")
    assert second == first and calls == {"greedy": 0, "generate": 0}
    assert run2["store"] == run["store"]


@pytest.mark.parametrize("extra", [["--max-new-tokens", "4"], ["--num-beams", "2"], ["--prompt", "a photo of"]])
def test_other_generation_settings_recompute(tiny_blips, photos, tmp_path, calls, extra):
    first, _ = _run(photos, tiny_blips[0], tmp_path / "a.json")
    calls.update(greedy=0, generate=0)
    _run(photos, tiny_blips[0], tmp_path / "b.json", *extra)
    assert calls["greedy"] + calls["generate"] == len(first)
    calls.update(greedy=0, generate=0)
    _run(photos, tiny_blips[0], tmp_path / "c.json", *extra)  # and keep their own captions
    assert calls == {"greedy": 0, "generate": 0}


def test_another_model_recomputes(tiny_blips, photos, tmp_path, calls):
    first, run_a = _run(photos, tiny_blips[0], tmp_path / "a.json")
    calls["greedy"] = 0
    _, run_b = _run(photos, tiny_blips[1], tmp_path / "b.json")
    assert calls["greedy"] == len(first) and run_a["store"] != run_b["store"]


def test_a_changed_photo_alone_is_captioned_again(tiny_blips, photos, tmp_path, calls):
    first, _ = _run(photos, tiny_blips[0], tmp_path / "a.json")
    changed = sorted(photos.iterdir())[0]
    changed.write_bytes(changed.read_bytes() + b"\0")  # other bytes, same picture
    calls["greedy"] = 0
    second, _ = _run(photos, tiny_blips[0], tmp_path / "b.json")
    assert calls["greedy"] == 1 and second == first


def test_no_store_always_generates(tiny_blips, photos, tmp_path, calls):
    first, _ = _run(photos, tiny_blips[0], tmp_path / "a.json", "--no-store")
    _, run = _run(photos, tiny_blips[0], tmp_path / "b.json", "--no-store")
    assert calls["greedy"] == 2 * len(first) and run["store"] is None


def test_a_stored_run_loads_the_model_for_a_photo_that_was_not_stored(tiny_blips, tmp_path):
    """``StoredCaptionTask``: a stored caption is served as it is; an image (a file changed after the
    run's check) loads the real task once, which captions it and stores the caption."""
    import torch
    from PIL import Image

    from wwts.core.config import RunConfig
    from wwts.core.engine import process_batch
    from wwts.core.input import DecodedImage, Sample
    from wwts.core.store import StoredCaption
    from wwts.core.tasks.caption_store import StoredCaptionTask, open_caption_store

    config = RunConfig(task="caption", inputs=(tmp_path,), model=str(tiny_blips[0]), max_new_tokens=4,
                       store_dir=tmp_path / "store")
    loads = []

    def load():
        loads.append(1)
        return caption.load_task(config, torch.device("cpu"), torch.float32)

    task = StoredCaptionTask(config, open_caption_store(config, "torch", "float32"), load)
    image = Image.effect_noise((40, 30), 64).convert("RGB")
    items = [("a.png", Sample(DecodedImage(None, 40, 30, 1, None), StoredCaption("a stored caption"), "h-a", True)),
             ("b.png", Sample(DecodedImage(None, 40, 30, 1, None), task.prepare(image), "h-b", False))]
    records = process_batch(task, items)
    assert records[0].caption == "a stored caption" and records[0].cached
    assert isinstance(records[1].caption, str) and not records[1].error and loads == [1]
    assert task.store.store._query("SELECT caption, width FROM captions WHERE hash = 'h-b'", ()) == (records[1].caption, 40)
