"""``--image-size N``: the image tower at another input side with interpolated position embeddings
(transformers' ``interpolate_pos_encoding``), on the tiny models of every zero-shot family and
every backend the image tower runs on; refused in one line where a model cannot interpolate.
Real models, random weights (tests/tiny_models.py: 30 px inputs, patch 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import classify
from tests.tiny_models import IMAGE_SIZE, build_tiny_clip, build_tiny_siglip

#: A side the tiny models' patch size (6) divides, other than their own 30.
SIZE = 36


@pytest.fixture(scope="module")
def families(tmp_path_factory, tiny_clip) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {"chinese-clip": tiny_clip, "clip": build_tiny_clip(root / "clip"),
            "siglip": build_tiny_siglip(root / "siglip")}


def _run(folder: Path, photos: Path, out: Path, *extra) -> list[dict]:
    result = classify(photos, "--labels", "人,车", "--model", folder, "--out", out, *extra)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("family", ["chinese-clip", "clip", "siglip"])
def test_each_family_runs_at_another_size_on_torch(family, families, six, tmp_path):
    records = _run(families[family], six, tmp_path / "r.jsonl", "--backend", "torch", "--image-size", SIZE)
    assert len(records) == 6 and not any(r["error"] for r in records)
    run = json.loads((tmp_path / "r.jsonl.run.json").read_text(encoding="utf-8"))
    assert json.dumps(run).count(f'"image_size": {SIZE}') >= 1


def test_the_tower_gets_interpolated_inputs_of_that_size(tiny_clip, sample_images):
    """The embedding equals transformers' own ``get_image_features(..., interpolate_pos_encoding=True)``
    on ``pixel_values`` of the new side (exact pixels: the processor asked for that size)."""
    import torch
    from transformers import AutoModel, AutoProcessor

    from wwts.core.backends import TorchTower
    from wwts.core.input import load_image
    from wwts.core.tasks.dual_encoder import from_model

    model, processor = AutoModel.from_pretrained(tiny_clip).eval(), AutoProcessor.from_pretrained(tiny_clip)
    encoder = from_model(model, processor, image_size=SIZE)
    image = load_image(sample_images / "chelsea.png").image
    pixels = encoder.prepare(image)
    assert tuple(pixels.shape) == (1, 3, SIZE, SIZE)
    expected = processor.image_processor(images=[image], size={"shortest_edge": SIZE},
                                         crop_size={"height": SIZE, "width": SIZE}, return_tensors="pt")
    assert torch.equal(pixels, expected["pixel_values"])
    ours = TorchTower(model, torch.device("cpu")).encode(pixels)
    with torch.no_grad():
        theirs = model.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True)
    theirs = getattr(theirs, "pooler_output", theirs)
    theirs = theirs / theirs.norm(dim=-1, keepdim=True)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_converting_backends_keep_one_export_per_size(backend, tiny_clip, six, tmp_path):
    """A conversion at another size is another export (``image-float-36px``): it neither replaces
    the model's own nor is served to a run at the model's size; the store keeps the sizes apart."""
    from wwts.core.backends import export

    store = tmp_path / "store"
    sized = _run(tiny_clip, six, tmp_path / "a.jsonl", "--backend", backend, "--image-size", SIZE, "--store", store)
    native = _run(tiny_clip, six, tmp_path / "b.jsonl", "--backend", backend, "--store", store)
    again = _run(tiny_clip, six, tmp_path / "c.jsonl", "--backend", backend, "--image-size", SIZE, "--store", store)
    assert not any(r["error"] for r in sized + native)
    assert [r["top_k"] for r in again] == [r["top_k"] for r in sized]
    names = set()
    for where in export.exports(export.runtime_of(backend)):
        names |= set(export.read_export(where).get("towers", {}))
    assert {"image-float", f"image-float-{SIZE}px", "text-float"} <= names, names
    assert len(list(store.rglob("*.sqlite"))) == 2  # one store file per image size


def test_a_patch_size_that_does_not_divide_is_refused_in_one_line(tiny_clip, six, tmp_path):
    result = classify(six, "--labels", "人,车", "--model", tiny_clip, "--backend", "torch", "--image-size", 40)
    assert result.exit_code == 2
    assert "--image-size 40: must be a multiple of the model's patch size, 6" in result.output
    assert "Traceback" not in result.output


def test_a_family_without_interpolation_is_refused_in_one_line():
    """SigLIP 2 takes its sizes through ``spatial_shapes``, not ``interpolate_pos_encoding``."""
    from transformers import Siglip2Config, Siglip2Model

    from wwts.core.errors import UsageError
    from wwts.core.tasks.dual_encoder import check_image_size

    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    model = Siglip2Model(Siglip2Config(text_config=dict(vocab_size=64, **tower), vision_config=dict(patch_size=6, **tower)))
    with pytest.raises(UsageError) as caught:
        check_image_size(model, SIZE)
    message = str(caught.value)
    assert "\n" not in message and "cannot interpolate" in message and "siglip2" in message


def test_a_closed_set_classifier_is_refused_in_one_line(six, tmp_path):
    from tests.test_labels import tiny_vit_classifier

    folder = tiny_vit_classifier(tmp_path / "vit")
    result = classify(six, "--model", folder, "--image-size", 48)
    assert result.exit_code == 2
    assert "--image-size is for dual encoders" in result.output
    assert IMAGE_SIZE == 30  # the tiny dual encoders' own side, which SIZE differs from
