"""BLIP's captioning towers as plain tensor functions, for ``openvino.convert_model`` (torch is
needed to convert them, never to run them: ``caption_runtime.py``).

- ``BlipImageTower``: ``pixel_values (B, 3, S, S)`` → the text decoder's cross-attention keys and
  values over the image, ``(L, B, H, P, d)`` each (L decoder layers, H heads, P image patches + 1,
  d head size): the vision tower and every layer's cross-attention key / value projections, run
  once per image.
- ``BlipDecoderStep``: one decoder step with its key/value cache as tensors: ``input_ids (B, 1)``,
  ``position_ids (B, 1)``, ``attention_mask (B, T + 1)``, ``past_keys`` / ``past_values``
  ``(L, B, H, T, d)``, ``cross_keys`` / ``cross_values`` → ``logits (B, V)`` of the step and the
  self-attention cache grown by one, ``(L, B, H, T + 1, d)`` each.

The step runs transformers' own BLIP text decoder: the tensors are put in an
``EncoderDecoderCache`` (the cross-attention half marked as computed, so the image keys are
reused, as ``generate`` reuses them after its first step). The cache always holds at least one
slot: the first step gets one masked slot (``attention_mask`` 0 there, so its softmax weight is
exactly 0) and explicit ``position_ids``, so one traced graph serves every step (a prompt prefix
is fed one token per step, which a causal decoder computes the same).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache


def _heads(states: torch.Tensor, linear: torch.nn.Module, head_size: int) -> torch.Tensor:
    """``(B, P, D)`` through ``linear`` → ``(B, H, P, d)``."""
    batch, length = states.shape[:2]
    return linear(states).view(batch, length, -1, head_size).transpose(1, 2)


def _filled(keys: torch.Tensor, values: torch.Tensor, layers: int) -> DynamicCache:
    """A ``DynamicCache`` holding ``keys[i]`` / ``values[i]`` as layer i, set directly: its own first
    ``update`` would concatenate onto an empty 1-D tensor, which OpenVINO's converter refuses."""
    cache = DynamicCache()
    for i in range(layers):
        layer = DynamicLayer()
        layer.lazy_initialization(keys[i], values[i])
        layer.keys, layer.values = keys[i], values[i]
        cache.layers.append(layer)
    return cache


class BlipImageTower(torch.nn.Module):
    """``pixel_values`` → cross-attention ``(keys, values)`` of every decoder layer (module docstring)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.vision = model.vision_model
        self.cross = torch.nn.ModuleList(layer.crossattention.self for layer in model.text_decoder.bert.encoder.layer)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.vision(pixel_values=pixel_values)[0]
        keys = torch.stack([_heads(states, a.key, a.attention_head_size) for a in self.cross])
        values = torch.stack([_heads(states, a.value, a.attention_head_size) for a in self.cross])
        return keys, values


class BlipDecoderStep(torch.nn.Module):
    """One step of BLIP's text decoder with its cache as tensors (module docstring)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.decoder = model.text_decoder
        self.layers = len(model.text_decoder.bert.encoder.layer)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                past_keys: torch.Tensor, past_values: torch.Tensor, cross_keys: torch.Tensor,
                cross_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = EncoderDecoderCache(_filled(past_keys, past_values, self.layers),
                                    _filled(cross_keys, cross_values, self.layers))
        for i in range(self.layers):
            cache.is_updated[i] = True
        # only the shape of the image states is read once the cross keys are cached
        image = cross_keys[0].transpose(1, 2).flatten(2)
        image_mask = torch.ones(image.shape[:2], dtype=torch.long)
        out = self.decoder(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                           encoder_hidden_states=image, encoder_attention_mask=image_mask, cache=cache,
                           use_cache=True, is_decoder=True, logits_to_keep=1)
        layers = out.cache.self_attention_cache.layers
        return (out.logits[:, -1, :], torch.stack([layer.keys for layer in layers]),
                torch.stack([layer.values for layer in layers]))


#: Output names of each tower (for ``torch.onnx.export``) and the axes that vary: the batch (B),
#: the self-attention cache length (T) and the mask's length (T + 1).
OUTPUTS = {"caption-image": ("keys", "values"), "caption-step": ("logits", "new_keys", "new_values")}
DYNAMIC_AXES = {"pixel_values": {0: "B"}, "keys": {1: "B"}, "values": {1: "B"}, "input_ids": {0: "B"},
                "position_ids": {0: "B"}, "attention_mask": {0: "B", 1: "T1"}, "past_keys": {1: "B", 3: "T"},
                "past_values": {1: "B", 3: "T"}, "cross_keys": {1: "B"}, "cross_values": {1: "B"},
                "logits": {0: "B"}, "new_keys": {1: "B", 3: "T1"}, "new_values": {1: "B", 3: "T1"}}


def examples(model: Any, size: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Example inputs of the two towers (batch 2, a past of 2 slots) for tracing."""
    text = model.config.text_config
    layers = len(model.text_decoder.bert.encoder.layer)
    heads, head = text.num_attention_heads, text.hidden_size // text.num_attention_heads
    pixels = torch.zeros(2, 3, size, size)
    with torch.no_grad():
        keys, values = BlipImageTower(model)(pixels)
    step = {"input_ids": torch.full((2, 1), text.bos_token_id, dtype=torch.long),
            "position_ids": torch.full((2, 1), 1, dtype=torch.long),
            "attention_mask": torch.tensor([[0, 1, 1]] * 2, dtype=torch.long),
            "past_keys": torch.zeros(layers, 2, heads, 2, head), "past_values": torch.zeros(layers, 2, heads, 2, head),
            "cross_keys": keys, "cross_values": values}
    return {"pixel_values": pixels}, step
