"""A dual encoder's tower as a plain torch module, for the exporters.

``openvino.convert_model`` and ``torch.onnx.export`` trace a module's ``forward``; a transformers
dual encoder has two entry points (``get_image_features`` / ``get_text_features``), so the tower
to export is wrapped in a module whose ``forward`` is that call, returning the projected ``(B, D)``
embedding before L2 normalisation (normalised in float32 by the tower, as the torch backend does).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .torch import tower_features

#: Token inputs a text tower may take, in the order the exported graph lists them.
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class ExportModule(torch.nn.Module):
    """One tower of ``model`` as a module: image: ``pixel_values (B, 3, H, W)`` float32; text: token
    ids ``(L, T)`` (and mask / token types when the tokenizer gives them) → ``(B, D)`` projected
    embedding (not normalised). Only the inputs given become graph inputs."""

    def __init__(self, model: torch.nn.Module, tower: str) -> None:
        super().__init__()
        self.model, self.tower = model, tower

    def forward(self, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        given = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids}
        return tower_features(self.model, self.tower, {k: v for k, v in given.items() if v is not None})


def text_names(tokens: Mapping[str, Any]) -> list[str]:
    """The ``TEXT_INPUTS`` present in a tokenizer output, in graph order.

    Raises:
        ValueError: no ``input_ids``.
    """
    if "input_ids" not in tokens:
        raise ValueError("the tokenizer output has no input_ids")
    return [name for name in TEXT_INPUTS if name in tokens]


def example_image(size: int | None) -> torch.Tensor:
    """An example ``pixel_values (2, 3, S, S)`` for tracing (batch 2, so no exporter treats the
    batch axis as the constant 1); ``S`` defaults to 224."""
    side = int(size or 224)
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))


def example_tokens(tokens: Mapping[str, Any], names: list[str]) -> dict[str, torch.Tensor]:
    """The token tensors ``names`` as an export example of at least 2 rows (a single label's row
    is repeated, so no exporter fixes the batch axis at 1)."""
    out = {name: torch.as_tensor(tokens[name])[:2] for name in names}
    if out["input_ids"].shape[0] < 2:
        out = {name: t.repeat(2, 1) for name, t in out.items()}
    return out


def parameter_count(module: torch.nn.Module) -> int:
    """Number of weights in ``module`` (for the conversion time estimate)."""
    return sum(p.numel() for p in module.parameters())


def tower_parameters(model: torch.nn.Module, tower: str) -> int:
    """Weights of one tower: the vision or text submodule plus its projection (the whole model
    when these names are not there)."""
    names = ("vision_model", "visual_projection") if tower == "image" else ("text_model", "text_projection")
    parts = [getattr(model, n) for n in names if isinstance(getattr(model, n, None), torch.nn.Module)]
    return sum(parameter_count(p) for p in parts) or parameter_count(model)
