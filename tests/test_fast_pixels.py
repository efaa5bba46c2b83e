"""The fast pixels a run makes by default (1x JPEG draft + ``ImagePreprocessor(fast=True)``) stay
within the tolerance measured on real photos of the exact recipe (2x draft + transformers'
resize-then-crop), which ``--exact-pixels`` keeps bit-identical to transformers' processor; the
two never share a store; and the decode pool lets a waiting thread decode."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import EXIF_SAMPLES, SAMPLE_IMAGES
from tests.helpers import classify
from wwts.core.input import DecodePool, ImagePreprocessor, load_image

#: Tolerances of fast against exact ``pixel_values`` (normalised units: one 8-bit step is about
#: 0.015), measured on the 96 photos of sample_images and exif-samples/jpg at 224 px with the
#: Chinese-CLIP recipe (2026-12-07): mean |diff| per photo at most 0.090, max |diff| 2.07 (single
#: pixels on sharp edges). The bounds leave a margin over those.
MEAN_TOLERANCE = 0.12
MAX_TOLERANCE = 2.5
#: Chinese-CLIP's image processor (as transformers saves it, ``processor_config.json``).
RECIPE = {"image_processor_type": "ChineseCLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 224},
          "resample": 3, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "do_rescale": True,
          "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
          "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True}


def _photos() -> list[Path]:
    photos = [p for p in sorted(SAMPLE_IMAGES.iterdir()) if p.suffix.lower() in (".jpg", ".png")]
    if EXIF_SAMPLES.is_dir():
        photos += sorted((EXIF_SAMPLES / "jpg").rglob("*.jpg"))[:12]  # the largest JPEGs are among them
    return photos


@pytest.mark.parametrize("photo", _photos(), ids=lambda p: p.name)
def test_fast_pixels_stay_within_the_measured_tolerance_of_the_exact_recipe(photo):
    fast = ImagePreprocessor.from_config(RECIPE, fast=True)
    exact = ImagePreprocessor.from_config(RECIPE)
    ours = fast(load_image(photo, draft_size=224, draft_keep=1).image)
    reference = exact(load_image(photo, draft_size=224, draft_keep=2).image)
    assert ours.shape == reference.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    diff = np.abs(ours - reference)
    assert diff.mean() <= MEAN_TOLERANCE and diff.max() <= MAX_TOLERANCE, (diff.mean(), diff.max())


def test_exact_pixels_equal_the_processor_on_real_photos(tiny_clip):
    """``--exact-pixels``' maker (``pixel_maker(fast=False)``) is bit-identical to transformers'
    processor on the same decoded image, as before the fast recipe."""
    import torch
    from transformers import AutoProcessor

    from wwts.core.tasks.task import pixel_maker

    processor = AutoProcessor.from_pretrained(tiny_clip).image_processor
    exact = pixel_maker(processor, fast=False)
    for photo in _photos()[:6]:
        image = load_image(photo, draft_size=30).image
        assert torch.equal(exact(image), processor(images=[image], return_tensors="pt")["pixel_values"]), photo


def test_the_fast_draft_decodes_to_about_the_model_size(tmp_path):
    from PIL import Image

    path = tmp_path / "big.jpg"
    Image.effect_noise((2000, 1500), 40).convert("RGB").save(path, quality=80)
    fast = load_image(path, draft_size=224, draft_keep=1)
    exact = load_image(path, draft_size=224, draft_keep=2)
    assert 224 <= min(fast.image.size) < 448 <= min(exact.image.size)
    assert (fast.width, fast.height) == (exact.width, exact.height) == (2000, 1500)


def test_fast_and_exact_pixels_never_share_a_store(tiny_clip, six, tmp_path):
    store = tmp_path / "store"
    for name, extra in (("fast", ()), ("exact", ("--exact-pixels",))):
        out = tmp_path / f"{name}.jsonl"
        result = classify(six, "--labels", "人,车", "--model", tiny_clip, "--backend", "torch", "--out", out,
                          "--store", store, *extra)
        assert result.exit_code == 0, result.output
        run = json.loads((tmp_path / f"{name}.jsonl.run.json").read_text(encoding="utf-8"))
        assert json.dumps(run).count(f'"pixels": "{name}"') == 1
    assert len(list(store.rglob("*.sqlite"))) == 2


def test_a_thread_waiting_for_a_result_decodes_queued_paths(sample_images):
    """The engine's thread decodes while it waits (``DecodePool.result``): with the pool's one
    thread held up, the next result still comes."""
    held, release = threading.Event(), threading.Event()

    def transform(image):
        if image.size == (451, 300):  # chelsea.png: the first photo, held in the pool's thread
            held.set()
            assert release.wait(30)
        return image.size

    with DecodePool(1, transform=transform) as pool:
        first = pool.submit(sample_images / "chelsea.png")
        assert held.wait(30)
        second = pool.submit(sample_images / "coffee.jpg")
        assert pool.result(second).inputs == (600, 400)  # decoded by this thread
        release.set()
        assert pool.result(first).inputs == (451, 300)
