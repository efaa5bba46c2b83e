"""BLIP's shrinking-batch greedy loop (``core/tasks/caption_generate.py``) on a tiny random BLIP:
its tokens are ``generate``'s, and a batch gives each image the tokens it gets alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wwts.core.tasks.caption_generate import blip_greedy

#: A token the tiny BLIP below emits at different steps for different images: made its
#: end-of-sequence token, rows end at different steps and the batch shrinks.
EARLY_END = 11


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from tests.tiny_caption_models import build_tiny_blip

    folder = build_tiny_blip(tmp_path_factory.mktemp("gen") / "blip")
    return BlipForConditionalGeneration.from_pretrained(folder).eval(), BlipProcessor.from_pretrained(folder)


def _pixels(processor, n: int = 8) -> torch.Tensor:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def _strip(row: torch.Tensor, pad: int) -> list[int]:
    return [t for t in row.tolist() if t != pad]


@pytest.mark.parametrize("eos", [None, EARLY_END])
def test_batch_equals_generate_and_one_image_at_a_time(blip, eos, monkeypatch):
    model, processor = blip
    text = model.config.text_config
    if eos is not None:
        monkeypatch.setattr(text, "sep_token_id", eos)
    pixels = _pixels(processor)
    with torch.inference_mode():
        batch = blip_greedy(model, pixels, max_new_tokens=12)
        reference = model.generate(pixel_values=pixels, max_new_tokens=12)
        alone = [blip_greedy(model, pixels[i:i + 1], max_new_tokens=12)[0] for i in range(len(pixels))]
    assert torch.equal(batch, reference)
    assert [_strip(r, text.pad_token_id) for r in batch] == [_strip(r, text.pad_token_id) for r in alone]
    if eos is not None:  # the rows ended at different steps: the shrinking path ran
        lengths = {len(_strip(r, text.pad_token_id)) for r in batch}
        assert len(lengths) > 1 and max(lengths) <= 13


def test_a_prefix_is_continued_as_generate_does(blip):
    model, processor = blip
    pixels = _pixels(processor, 3)
    prompt = processor(text=["a photo of"] * 3, return_tensors="pt")
    with torch.inference_mode():
        ours = blip_greedy(model, pixels, prompt["input_ids"], prompt["attention_mask"], max_new_tokens=6)
        theirs = model.generate(pixel_values=pixels, input_ids=prompt["input_ids"].clone(),
                                attention_mask=prompt["attention_mask"], max_new_tokens=6)
    assert torch.equal(ours, theirs)
