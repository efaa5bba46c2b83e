"""Shared fixtures: an isolated, offline Hugging Face environment and tiny saved models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = ROOT / "sample_images"
SHARED_DATA = ROOT.parent / "shared" / "data"
EXIF_SAMPLES = SHARED_DATA / "exif-samples"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """Point every cache and config folder at a temporary one and forbid hub access."""
    home = tmp_path_factory.getbasetemp() / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random Chinese-CLIP saved with ``save_pretrained`` (loaded like a user's folder)."""
    from tests.tiny_models import build_tiny_chinese_clip

    return build_tiny_chinese_clip(tmp_path_factory.mktemp("models") / "tiny-chinese-clip")


@pytest.fixture(scope="session")
def sample_images() -> Path:
    """The project's redistributable sample photos."""
    assert SAMPLE_IMAGES.is_dir() and any(SAMPLE_IMAGES.iterdir())
    return SAMPLE_IMAGES


@pytest.fixture
def exif_samples() -> Path:
    """``../shared/data/exif-samples`` (skips the test when the folder is absent)."""
    if not EXIF_SAMPLES.is_dir():
        pytest.skip("../shared/data/exif-samples is not present")
    return EXIF_SAMPLES
