"""BLIP captions on ONNX Runtime (``caption_runtime`` with ``runtime="onnxruntime"``): the two towers
of ``caption_towers.py`` exported with ``torch.onnx.export`` from a tiny random BLIP give torch
float32's tokens, the export is saved and reused, and ``wwts caption --backend onnxruntime`` runs
end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from wwts.cli.app import app  # noqa: E402
from wwts.core.backends import caption_runtime  # noqa: E402
from wwts.core.tasks.caption_generate import blip_greedy  # noqa: E402
from tests.tiny_caption_models import TINY_IMAGE_SIZE, build_tiny_blip  # noqa: E402

CPU = (("CPUExecutionProvider", {}),)


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    folder = build_tiny_blip(tmp_path_factory.mktemp("ort") / "blip")
    return folder, BlipForConditionalGeneration.from_pretrained(folder).eval(), BlipProcessor.from_pretrained(folder)


@pytest.mark.own_conversions
@pytest.mark.parametrize("eos", [None, 11])  # 11: rows end at different steps, the batch shrinks
def test_onnxruntime_tokens_equal_torch_float32_then_the_export_is_reused(blip, eos, monkeypatch):
    folder, model, processor = blip
    if eos is not None:
        monkeypatch.setattr(model.config.text_config, "sep_token_id", eos)
    before = caption_runtime.CONVERSIONS["caption"]
    runtime = caption_runtime.build_caption_runtime(model, str(folder), TINY_IMAGE_SIZE, runtime="onnxruntime",
                                                    providers=CPU, threads=1)
    assert caption_runtime.CONVERSIONS["caption"] == before + 2 and runtime.converted
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(6)]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    prompt = processor(text=["a photo of"] * len(pixels), return_tensors="pt")
    with torch.inference_mode():
        plain = blip_greedy(model, pixels, max_new_tokens=10).numpy()
        prefixed = blip_greedy(model, pixels, prompt["input_ids"], prompt["attention_mask"], max_new_tokens=6).numpy()
    assert np.array_equal(runtime.generate(pixels.numpy(), max_new_tokens=10), plain)
    assert np.array_equal(runtime.generate(pixels.numpy(), prompt["input_ids"].numpy(), max_new_tokens=6), prefixed)
    again = caption_runtime.build_caption_runtime(model, str(folder), TINY_IMAGE_SIZE, runtime="onnxruntime",
                                                  providers=CPU)
    assert caption_runtime.CONVERSIONS["caption"] == before + 2 and not again.converted


def test_caption_backend_onnxruntime_end_to_end(blip, six, tmp_path):
    runner = CliRunner()
    docs = {}
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / f"{backend}.json"
        result = runner.invoke(app, ["caption", str(six), "--model", str(blip[0]), "--backend", backend, "--dtype",
                                     "float32", "--max-new-tokens", "6", "--no-store", "--out", str(out)])
        assert result.exit_code == 0, result.output
        docs[backend] = json.loads(out.read_text(encoding="utf-8"))
    assert docs["onnxruntime"]["run"]["backend"] == "onnxruntime"
    assert [r["caption"] for r in docs["onnxruntime"]["results"]] == [r["caption"] for r in docs["torch"]["results"]]


def test_onnxruntime_refuses_caption_int8_and_beams_in_one_line(blip, six, tmp_path):
    for extra in (["--quantize", "int8"], ["--num-beams", "2"]):
        result = CliRunner().invoke(app, ["caption", str(six), "--model", str(blip[0]), "--backend", "onnxruntime",
                                          *extra, "--no-store", "--out", str(tmp_path / "c.json")])
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert "--backend openvino" in result.output or "--backend torch" in result.output
