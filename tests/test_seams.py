"""The seams later issues plug into, each tested on its own with a tiny real model (offline):

- tower (``core.backends``): what runs a dual encoder's image or text tower;
- embedding store (``core.store``): asked before image embeddings are computed;
- batch function (``core.engine.process_batch``): decoded batch in, records out, with no CLI,
  writer or run around it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wwts.core import engine
from wwts.core.backends import Tower, TorchTower, as_features
from wwts.core.config import RunConfig
from wwts.core.errors import ImageError
from wwts.core.input import DecodePool, Sample
from wwts.core.store import EmbeddingStore, NullStore
from wwts.core.tasks import ZeroShotTask, load_task

CPU = torch.device("cpu")
LABELS = ("人", "车", "猫", "花")


def _config(inputs, model, **kw) -> RunConfig:
    return RunConfig(task="classify", inputs=(inputs,), labels=LABELS, model=str(model), device="cpu",
                     dtype="float32", **kw)


@pytest.fixture
def task(tiny_clip, sample_images) -> ZeroShotTask:
    # one template (not Chinese-CLIP's default ensemble): text_features are then the prompts' own features
    task = load_task(_config(sample_images, tiny_clip, prompt="一张{}的照片。"), CPU, torch.float32)
    task.to(CPU, torch.float32)
    return task


def _pixels(task: ZeroShotTask, sample_images: Path, n: int = 3) -> torch.Tensor:
    paths = sorted(sample_images.glob("*.jpg"))[:n]
    return task.collate([task.prepare(Image.open(p).convert("RGB")) for p in paths])["pixel_values"]


def _forward(task: ZeroShotTask, inputs: dict) -> np.ndarray:
    """``task.forward`` as the engine calls it: under inference mode."""
    with torch.inference_mode():
        return task.forward(inputs)


# --- image and text encoder ---------------------------------------------------------------------


def test_torch_image_encoder_gives_the_models_own_features_normalised(task, sample_images):
    pixels = _pixels(task, sample_images)
    encoder = TorchTower(task.model, CPU, torch.float32, "image")
    assert isinstance(encoder, Tower) and encoder.device == CPU and encoder.dtype == torch.float32
    got = encoder.encode(pixels)
    with torch.inference_mode():
        own = as_features(task.model.get_image_features(pixel_values=pixels)).float()
    assert got.shape == (pixels.shape[0], own.shape[1]) and got.dtype == torch.float32
    assert torch.allclose(got, own / own.norm(dim=-1, keepdim=True), atol=1e-6)
    assert torch.allclose(got.norm(dim=-1), torch.ones(pixels.shape[0]), atol=1e-5)


def test_torch_text_encoder_gives_the_models_own_features_normalised(task):
    tokens = task.encoder.tokenize(list(task.prompts), None, False)
    encoder = TorchTower(task.model, CPU, tower="text")
    assert isinstance(encoder, Tower)
    got = encoder.encode(dict(tokens))
    with torch.inference_mode():
        own = as_features(task.model.get_text_features(**tokens)).float()
    assert got.shape == (len(LABELS), own.shape[1])
    assert torch.allclose(got, own / own.norm(dim=-1, keepdim=True), atol=1e-6)
    assert torch.allclose(torch.from_numpy(task.text_features), got, atol=1e-6)  # what classify encoded in setup


def test_classify_scores_through_its_image_encoder(task, sample_images):
    pixels = _pixels(task, sample_images)
    calls = []

    class Recording:
        device, dtype = CPU, torch.float32

        def encode(self, pixel_values):
            calls.append(pixel_values.shape[0])
            return TorchTower(task.model, CPU, torch.float32, "image").encode(pixel_values)

    reference = _forward(task, {"pixel_values": pixels})
    task.encoder.image = Recording()
    assert np.array_equal(_forward(task, {"pixel_values": pixels}), reference)
    assert calls == [pixels.shape[0]]


# --- embedding store ----------------------------------------------------------------------------


class DictStore:
    """A store in a dict, counting what it is asked."""

    def __init__(self) -> None:
        self.data: dict = {}
        self.asked: list = []

    def get(self, keys):
        self.asked.append(list(keys))
        return {k: self.data[k] for k in keys if k in self.data}

    def put(self, items):
        self.data.update(items)


class CountingEncoder:
    """An image ``Tower`` that counts the images it encodes."""

    def __init__(self, inner: Tower) -> None:
        self.inner, self.device, self.dtype = inner, inner.device, inner.dtype
        self.images = 0

    def encode(self, pixel_values):
        self.images += pixel_values.shape[0]
        return self.inner.encode(pixel_values)


def test_a_second_batch_with_the_same_keys_does_not_call_the_encoder(task, sample_images):
    pixels = _pixels(task, sample_images)
    keys = ["a", "b", "c"]
    reference = _forward(task, {"pixel_values": pixels})  # no keys: the store is not asked
    store = DictStore()
    assert isinstance(store, EmbeddingStore)
    task.store = store
    task.encoder.image = encoder = CountingEncoder(task.image_encoder)
    first = _forward(task, {"pixel_values": pixels, "keys": keys})
    assert encoder.images == 3 and set(store.data) == set(keys)
    second = _forward(task, {"pixel_values": pixels, "keys": keys})
    assert encoder.images == 3  # every embedding came from the store
    assert np.allclose(first, reference, atol=1e-6) and np.allclose(second, reference, atol=1e-6)
    # A batch mixing a known and a new key encodes only the new image.
    mixed = _forward(task, {"pixel_values": pixels[[0, 1]], "keys": ["a", "new"]})
    assert encoder.images == 4 and np.allclose(mixed, reference[[0, 1]], atol=1e-6)
    assert store.asked == [keys, keys, ["a", "new"]]


def test_with_the_null_store_every_embedding_is_computed(task, sample_images):
    pixels = _pixels(task, sample_images)
    assert isinstance(task.store, NullStore) and isinstance(task.store, EmbeddingStore)
    task.encoder.image = encoder = CountingEncoder(task.image_encoder)
    _forward(task, {"pixel_values": pixels, "keys": ["a", "b", "c"]})
    _forward(task, {"pixel_values": pixels, "keys": ["a", "b", "c"]})
    assert encoder.images == 6


# --- batch function -----------------------------------------------------------------------------


def test_process_batch_gives_the_engines_records_without_a_run(tiny_clip, sample_images, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = sorted(sample_images.glob("*.jpg"))[:4] + [bad]
    config = _config(sample_images, tiny_clip, batch_size=2)
    ref = list(engine.start(config, paths=paths))

    task = load_task(config, CPU, torch.float32)  # no Run, no CLI, no writer
    task.to(CPU, torch.float32)
    items = []
    with DecodePool(2, draft_size=task.input_size, draft_keep=task.draft_keep, transform=task.prepare) as pool:
        for path, future in [(p, pool.submit(p)) for p in paths]:
            try:
                items.append((path, future.result()))
            except ImageError as exc:
                items.append((path, exc))
    assert all(isinstance(s, Sample) and s.decoded.image is None for _, s in items[:4])
    records = engine.process_batch(task, items)
    assert [r.path for r in records] == [r.path for r in ref]
    assert records[-1].error and records[-1].error == ref[-1].error and records[-1].label is None
    for got, want in zip(records[:4], ref[:4]):
        assert got.error is None and (got.width, got.height) == (want.width, want.height)
        assert got.label == want.label and [t.label for t in got.top_k] == [t.label for t in want.top_k]
        assert got.score == pytest.approx(want.score, abs=1e-6)


def test_process_batch_retries_a_failing_batch_image_by_image(task, sample_images):
    paths = sorted(sample_images.glob("*.jpg"))[:3]
    items = [(p, _sample(task, p)) for p in paths]
    real = task.forward

    def forward(inputs):
        if inputs["pixel_values"].shape[0] > 1:
            raise ValueError("this batch is cursed")
        return real(inputs)

    task.forward = forward
    records = engine.process_batch(task, items)
    assert [r.error for r in records] == [None, None, None] and all(r.label for r in records)
    task.forward = lambda inputs: (_ for _ in ()).throw(ValueError("always"))
    records = engine.process_batch(task, items)
    assert all(r.error == "inference: ValueError: always" for r in records)
    assert records[0].width == items[0][1].decoded.width  # the base fields stay


def _sample(task: ZeroShotTask, path: Path) -> Sample:
    """What the decode pool gives for ``path`` with ``transform=task.prepare``, made by hand."""
    from dataclasses import replace

    from wwts.core.input import load_image

    decoded = load_image(path)
    return Sample(replace(decoded, image=None), task.prepare(decoded.image))
