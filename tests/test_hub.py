"""The model hub's messages (``core/models/hub.py``): offline mode says it is on and how to turn it
off; an endpoint already set is named and not suggested again; the default hub suggests a mirror."""

from __future__ import annotations

import pytest

from wwts.core import models
from wwts.core.errors import ModelLoadError


# -- hub messages ---------------------------------------------------------------------------------


def test_offline_message_says_offline_mode_is_on_and_how_to_turn_it_off(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        models.resolve("nobody-here/not-cached-model")
    text = str(info.value)
    assert "offline mode is on" in text and "unset HF_HUB_OFFLINE" in text and "HF_HUB_OFFLINE=0" in text
    assert "\n" not in text


def test_unreachable_endpoint_already_set_is_not_suggested_again(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once, no network
    with pytest.raises(ModelLoadError) as info:
        models.download("nobody-here/not-cached-model")
    text = str(info.value)
    assert "cannot be reached" in text and "http://127.0.0.1:9" in text
    assert "export HF_ENDPOINT" not in text and "hf-mirror" not in text


def test_offline_with_endpoint_set_names_that_endpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example")
    text = models.offline_message("a/b", "/cache")
    assert "HF_ENDPOINT=https://mirror.example" in text and "export HF_ENDPOINT" not in text


def test_unreachable_default_hub_still_suggests_a_mirror(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert "export HF_ENDPOINT=https://hf-mirror.com" in models.hub_hint()
