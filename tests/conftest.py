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


def pytest_configure(config):
    config.addinivalue_line("markers", "own_conversions: an empty conversion cache of the test's own, not the "
                                       "session's shared one (for tests that count, corrupt or clear conversions)")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch, request, shared_conversions):
    """Point every cache and config folder at a fresh temporary one, forbid hub access, share the
    session's conversions, and simulate the CPU's bf16 calibration. The backend is not pinned: a
    run is ``--backend auto`` as users get it, unless a test pins what it compares.

    Each test gets caches of its own (``XDG_CACHE_HOME``, ``HF_HOME``), so nothing a user or an
    earlier test left in ``~/.cache/wwts`` or ``~/.cache/huggingface`` can change an outcome; only
    ``wwts/conversions`` (the OpenVINO / ONNX Runtime conversion cache, ``backends.cache.cache_root``)
    is a link to one folder for the session (``shared_conversions``), so the tiny models are
    converted once, not once per test. A test marked ``@pytest.mark.own_conversions`` (one that
    counts, corrupts or clears conversions) gets an empty folder of its own. The bf16-vs-float32
    timing (``core.calibration.time_block``) is replaced by ``SIMULATED_BF16_TIMES``; a test marked
    ``@pytest.mark.real_calibration`` measures for real.
    """
    base = tmp_path_factory.mktemp("env")
    home = base / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(base / "xdg-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("WWTS_BACKEND", raising=False)
    if request.node.get_closest_marker("own_conversions") is None:
        (base / "xdg-cache" / "wwts").mkdir(parents=True)
        (base / "xdg-cache" / "wwts" / "conversions").symlink_to(shared_conversions, target_is_directory=True)
    if request.node.get_closest_marker("real_calibration") is None:
        from wwts.core.hardware import calibration

        monkeypatch.setattr(calibration, "time_block", lambda batch_size, rounds=3: dict(SIMULATED_BF16_TIMES))


@pytest.fixture(scope="session")
def shared_conversions(tmp_path_factory) -> Path:
    """The conversion cache every test shares (see ``isolated_env``): with ``--backend auto`` on an
    x86 CPU with OpenVINO, each tiny model is converted on its first run in the session, and later
    tests load the saved conversion as a user's second run does."""
    return tmp_path_factory.mktemp("shared-conversions")


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
def six(tmp_path) -> Path:
    """A folder ``ex`` of six small distinct noise PNGs (``p0.png`` .. ``p5.png``, 40-45 x 30 pixels)."""
    from PIL import Image

    folder = tmp_path / "ex"
    folder.mkdir()
    for i in range(6):
        Image.effect_noise((40 + i, 30), 64).convert("RGB").save(folder / f"p{i}.png")
    return folder


@pytest.fixture
def load_spy(monkeypatch) -> list:
    """Records every ``engine.start`` call (the model loads there) and lets it go on."""
    from wwts.core import engine  # the package the CLI calls

    calls: list = []
    real = engine.start

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "start", spy)
    return calls


@pytest.fixture
def exif_samples() -> Path:
    """``../shared/data/exif-samples`` (skips the test when the folder is absent)."""
    if not EXIF_SAMPLES.is_dir():
        pytest.skip("../shared/data/exif-samples is not present")
    return EXIF_SAMPLES
