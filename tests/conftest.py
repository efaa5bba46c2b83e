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


#: What the simulated CPU calibration measures unless a test says otherwise: bf16 slower than
#: float32 (as on a VM that shows AVX512-BF16 without AMX), so ``--dtype auto`` is float32 on every
#: machine the suite runs on, whatever its CPU really measures.
SIMULATED_BF16_TIMES = {"float32": 0.10, "bfloat16": 0.14}


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch, request):
    """Point every cache and config folder at a fresh temporary one, forbid hub access, pin the
    backend to torch, and simulate the CPU's bf16 calibration.

    Each test gets caches of its own (``XDG_CACHE_HOME``, ``HF_HOME``), so nothing a user or an
    earlier test left in ``~/.cache/wwts`` or ``~/.cache/huggingface`` can change an outcome. The
    bf16-vs-float32 timing (``core.calibration.time_block``) is replaced by
    ``SIMULATED_BF16_TIMES``; a test marked ``@pytest.mark.real_calibration`` measures for real.
    """
    base = tmp_path_factory.mktemp("env")
    home = base / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(base / "xdg-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    # `--backend auto` would convert every tiny model for OpenVINO where it is installed: the suite
    # runs on torch unless a test asks for a backend (tests/test_backends.py clears this).
    monkeypatch.setenv("WWTS_BACKEND", "torch")
    if request.node.get_closest_marker("real_calibration") is None:
        from wwts.core.hardware import calibration

        monkeypatch.setattr(calibration, "time_block", lambda batch_size, rounds=3: dict(SIMULATED_BF16_TIMES))


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
