"""Which task adapter a run uses: ``load_task`` dispatches on ``RunConfig.task``."""

from __future__ import annotations

import torch

from ..config import RunConfig
from . import caption, classify, retrieval
from .base import Task


def load_task(config: RunConfig, device: torch.device, dtype: torch.dtype) -> Task:
    """Build the task adapter for ``config.task`` (``classify`` or ``caption``), its model loaded on
    the CPU; the caller then moves it with ``task.to(device, dtype)``.

    Raises:
        ModelLoadError: the model cannot be loaded or does not fit the task.
        UsageError: a setting the model does not take (e.g. ``--prompt`` for ViT-GPT2).
    """
    if config.retrieval:  # wwts search / wwts embed: a classify model with another head
        return retrieval.load_task(config, device, dtype)
    load = classify.load_task if config.task == "classify" else caption.load_task
    return load(config, device, dtype)
