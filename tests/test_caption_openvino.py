"""BLIP captions on OpenVINO (``core/backends/caption_runtime.py``): a tiny random BLIP converted
through the real exporter (``openvino.convert_model``) gives torch float32's tokens; the conversion
is saved and reused, and rebuilt when corrupt; ``wwts caption --backend openvino`` end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("openvino")

from wwts.cli.app import app  # noqa: E402
from wwts.core.backends import caption_runtime  # noqa: E402
from wwts.core.tasks.caption_generate import blip_greedy  # noqa: E402
from tests.tiny_caption_models import TINY_IMAGE_SIZE, build_tiny_blip  # noqa: E402

#: A token the tiny BLIP emits at different steps per image: as its end token, rows end apart.
EARLY_END = 11


@pytest.fixture
def wwts_log(caplog, monkeypatch):
    """Warnings of the ``wwts`` logger, even when an earlier CLI test stopped its propagation."""
    monkeypatch.setattr(logging.getLogger("wwts"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="wwts"):
        yield caplog


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    folder = build_tiny_blip(tmp_path_factory.mktemp("ov") / "blip")
    return folder, BlipForConditionalGeneration.from_pretrained(folder).eval(), BlipProcessor.from_pretrained(folder)


def _pixels(processor, n: int = 6) -> torch.Tensor:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(n)]
    return processor(images=images, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("eos", [None, EARLY_END])
def test_openvino_tokens_equal_torch_float32_then_the_conversion_is_reused(blip, eos, monkeypatch):
    folder, model, processor = blip
    if eos is not None:
        monkeypatch.setattr(model.config.text_config, "sep_token_id", eos)
    before = caption_runtime.CONVERSIONS["caption"]
    runtime = caption_runtime.build_caption_runtime(model, str(folder), TINY_IMAGE_SIZE)
    pixels = _pixels(processor)
    prompt = processor(text=["a photo of"] * len(pixels), return_tensors="pt")
    with torch.inference_mode():
        plain = blip_greedy(model, pixels, max_new_tokens=10).numpy()
        prefixed = blip_greedy(model, pixels, prompt["input_ids"], prompt["attention_mask"], max_new_tokens=6).numpy()
    assert np.array_equal(runtime.generate(pixels.numpy(), max_new_tokens=10), plain)
    assert np.array_equal(runtime.generate(pixels.numpy(), prompt["input_ids"].numpy(), max_new_tokens=6), prefixed)
    converted = caption_runtime.CONVERSIONS["caption"]
    assert converted - before in (0, 2)  # both towers, unless the parametrized twin saved them
    caption_runtime.build_caption_runtime(model, str(folder), TINY_IMAGE_SIZE)  # a second run: no conversion
    assert caption_runtime.CONVERSIONS["caption"] == converted


def test_a_corrupt_conversion_is_rebuilt(blip, wwts_log):
    folder, model, processor = blip
    caption_runtime.build_caption_runtime(model, str(folder), TINY_IMAGE_SIZE)
    entries = caption_runtime.saved_towers(model, str(folder), TINY_IMAGE_SIZE)
    weights = next(p for p in Path(entries["caption-step"]["dir"]).iterdir() if p.suffix == ".bin")
    weights.write_bytes(b"\0" * weights.stat().st_size)  # same size, other bytes
    before = caption_runtime.CONVERSIONS["caption"]
    runtime = caption_runtime.build_caption_runtime(model, str(folder), TINY_IMAGE_SIZE)
    assert caption_runtime.CONVERSIONS["caption"] == before + 1 and "converting again" in wwts_log.text
    pixels = _pixels(processor, 2)
    with torch.inference_mode():
        assert np.array_equal(runtime.generate(pixels.numpy(), max_new_tokens=8),
                              blip_greedy(model, pixels, max_new_tokens=8).numpy())


def test_caption_backend_openvino_end_to_end(blip, six, tmp_path):
    folder = blip[0]
    runner = CliRunner()
    docs = {}
    for backend in ("openvino", "torch"):
        out = tmp_path / f"{backend}.json"
        result = runner.invoke(app, ["caption", str(six), "--model", str(folder), "--backend", backend, "--dtype",
                                     "float32", "--max-new-tokens", "6", "--no-store", "--out", str(out)])
        assert result.exit_code == 0, result.output
        docs[backend] = json.loads(out.read_text(encoding="utf-8"))
    assert docs["openvino"]["run"]["backend"] == "openvino"
    assert [r["caption"] for r in docs["openvino"]["results"]] == [r["caption"] for r in docs["torch"]["results"]]


def test_openvino_refuses_beams_in_one_line(blip, six, tmp_path):
    result = CliRunner().invoke(app, ["caption", str(six), "--model", str(blip[0]), "--backend", "openvino",
                                      "--num-beams", "2", "--no-store", "--out", str(tmp_path / "c.json")])
    assert result.exit_code != 0 and "--backend torch" in result.output and "Traceback" not in result.output


def test_the_caption_store_serves_an_openvino_run_apart_from_torch(blip, six, tmp_path, monkeypatch):
    from wwts.core import models

    runner = CliRunner()

    def run(backend: str) -> dict:
        out = tmp_path / "c.json"
        result = runner.invoke(app, ["caption", str(six), "--model", str(blip[0]), "--backend", backend,
                                     "--max-new-tokens", "4", "--store", str(tmp_path / "store"), "--overwrite",
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
        return json.loads(out.read_text(encoding="utf-8"))

    first = run("openvino")
    torch_run = run("torch")  # another backend: its own store file, computed
    assert torch_run["run"]["cached"] == 0 and torch_run["run"]["store"] != first["run"]["store"]
    monkeypatch.setattr(models, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    second = run("openvino")
    assert second["run"]["cached"] == len(second["results"]) and second["results"] == [
        {**r, "cached": True} for r in first["results"]]


@pytest.mark.parametrize("x86, openvino, device, int8, kind, want", [
    (True, True, "auto", False, "cpu", "openvino"),
    (True, True, "cpu", True, "cpu", "torch"),  # --quantize int8: torch's dynamic int8
    (True, True, "auto", False, "cuda", "torch"),  # an accelerator
    (True, False, "auto", False, "cpu", "torch"),  # no OpenVINO
    (False, True, "auto", False, "cpu", "torch"),  # not an x86 CPU
])
def test_caption_auto_rule(monkeypatch, x86, openvino, device, int8, kind, want):
    from wwts.core.backends import select

    monkeypatch.setattr(select, "is_x86", lambda: x86)
    monkeypatch.setattr(select, "installed", lambda name: openvino or name == "torch")
    name, reason = select.auto_backend(device, "caption", int8, torch_device=lambda: kind,
                                       openvino_devices=lambda: ["CPU"])
    assert name == want and reason.startswith("auto")


def test_auto_keeps_what_openvino_does_not_run_on_torch(blip, six, tmp_path, monkeypatch):
    """Beams under ``--backend auto`` on a machine whose auto pick is OpenVINO: torch, no error."""
    from wwts.core.backends import build, select

    monkeypatch.setattr(select, "auto_caption_backend", lambda *a: ("openvino", "auto: pinned"))
    monkeypatch.setattr(build, "caption_size_rule", lambda choice, *a: choice)  # six photos would start on torch
    out = tmp_path / "c.json"
    result = CliRunner().invoke(app, ["caption", str(six), "--model", str(blip[0]), "--num-beams", "2",
                                      "--max-new-tokens", "4", "--no-store", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert all(r["caption"] is not None for r in json.loads(out.read_text(encoding="utf-8"))["results"])


@pytest.mark.own_conversions
def test_int8_weights_are_saved_beside_the_float_towers_and_their_agreement_measured(blip, capsys):
    """``--quantize int8`` on OpenVINO: NNCF int8 weights of the decoder step, in its own entry of the
    same export, reused on the next run; the agreement with torch float32 is printed (a tiny random
    BLIP's logits are near ties, so its numbers say little about a trained model's: see the README)."""
    import openvino as ov

    folder, model, processor = blip
    before = caption_runtime.CONVERSIONS["caption"]
    runtime = caption_runtime.build_caption_runtime(model, str(folder), TINY_IMAGE_SIZE, int8=True)
    entries = caption_runtime.saved_towers(model, str(folder), TINY_IMAGE_SIZE, int8=True)
    assert {Path(e["dir"]).name for e in entries.values()} == {"caption-image-float", "caption-step-int8"}
    assert (Path(entries["caption-step"]["dir"]).parent / "caption-step-float").is_dir()
    step = ov.Core().read_model(Path(entries["caption-step"]["dir"]) / "model.xml")
    assert any(op.get_output_element_type(0) == ov.Type.u8 for op in step.get_ops() if op.get_type_name() == "Constant")
    made = caption_runtime.CONVERSIONS["caption"]
    assert made - before == 3  # the float pair, then the int8 decoder step made from it
    caption_runtime.build_caption_runtime(model, str(folder), TINY_IMAGE_SIZE, int8=True)
    assert caption_runtime.CONVERSIONS["caption"] == made  # reused
    pixels = _pixels(processor, 8)
    with torch.inference_mode():
        reference = blip_greedy(model, pixels, max_new_tokens=10).numpy()
    got = runtime.generate(pixels.numpy(), max_new_tokens=10)
    exact, overlap = caption_runtime.agreement(reference, got, model.config.text_config.sep_token_id)
    assert caption_runtime.agreement(reference, reference, model.config.text_config.sep_token_id) == (1.0, 1.0)
    assert 0.0 <= exact <= 1.0 and 0.0 < overlap <= 1.0
    with capsys.disabled():
        print(f"\ntiny BLIP, OpenVINO int8 weights vs torch float32, 8 images x 10 tokens: "
              f"exact captions {exact:.2f}, token overlap {overlap:.2f}")


def test_caption_int8_on_openvino_end_to_end(blip, six, tmp_path):
    out = tmp_path / "c.json"
    result = CliRunner().invoke(app, ["caption", str(six), "--model", str(blip[0]), "--backend", "openvino",
                                      "--quantize", "int8", "--max-new-tokens", "4", "--store", str(tmp_path / "s"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["run"]["backend"] == "openvino" and doc["run"]["quantize"] == "int8"
    assert all(r["caption"] is not None for r in doc["results"])
