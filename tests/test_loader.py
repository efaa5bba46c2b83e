"""Loading a model (``core/models/loader.py``): no model code runs without --trust-remote-code, and
safetensors weights are preferred to pickled ones (which load with one warning)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers import classify, no_traceback
import logging
import pytest
import torch
from tests.tiny_caption_models import build_tiny_blip
from wwts.core import models


LABELS = "人,车,猫"
#: float32 and one torch thread: deterministic scores, and cheap on the 2-core test machine.
FAST = ("--labels", LABELS, "--top-k", "3", "--dtype", "float32", "--threads", "1")


# --- models: no remote code, safetensors first --------------------------------------------------------


EVIL = "import os\nopen(os.environ['WWTS_TEST_MARKER'], 'w').write('ran')\n"


# These two check what transformers' loader reads from a model folder. ``--backend auto`` runs the same
# loader and then converts the test's throwaway copy of the model for OpenVINO (about 9 s each on a
# 2-core VM) for nothing, so they pin torch.


def test_model_code_is_not_run_without_trust_remote_code(tiny_clip, tmp_path, monkeypatch, six):
    monkeypatch.setenv("WWTS_BACKEND", "torch")
    marker = tmp_path / "remote-code-ran"
    monkeypatch.setenv("WWTS_TEST_MARKER", str(marker))
    model = Path(shutil.copytree(tiny_clip, tmp_path / "model-with-code"))
    (model / "configuration_evil.py").write_text(EVIL + "from transformers import ChineseCLIPConfig as EvilConfig\n")
    (model / "modeling_evil.py").write_text(EVIL + "from transformers import ChineseCLIPModel as EvilModel\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config))
    # a known model type: transformers' own class is used and the folder's code is ignored
    result = classify(six, *FAST, "--model", model, "--out", tmp_path / "a.jsonl")
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    # an unknown model type needs the code: refused with one line, the code still not run
    config["model_type"] = "evil_clip"
    (model / "config.json").write_text(json.dumps(config))
    result = classify(six, *FAST, "--model", model, "--out", tmp_path / "b.jsonl")
    assert result.exit_code == 2, result.output
    assert not marker.exists()
    no_traceback(result.output)
    # one error line, the last: only the start line and "loading model" come before it
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr


def test_safetensors_weights_are_preferred(tiny_clip, tmp_path, six, monkeypatch):
    monkeypatch.setenv("WWTS_BACKEND", "torch")
    model = Path(shutil.copytree(tiny_clip, tmp_path / "both-weights"))
    assert (model / "model.safetensors").exists()
    (model / "pytorch_model.bin").write_bytes(b"not a pickle: loading this would fail")
    result = classify(six, *FAST, "--model", model, "--out", tmp_path / "r.jsonl")
    assert result.exit_code == 0, result.output


def _error_lines(result) -> list[str]:
    """The ``error:`` lines of stderr (the start line may come first: it is printed before loading)."""
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if "error" in line.split(":", 1)[0]]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("blip") / "blip")


# -- not a dual encoder: refused before the weights load ------------------------------------------------------


def test_classify_refuses_a_captioning_checkpoint(tiny_blip, sample_images, tmp_path):
    result = classify(sample_images, "--labels", "人,车", "-m", tiny_blip, "--dtype", "float32",
                      "--out", tmp_path / "r.json")
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "BlipForConditionalGeneration" in lines[0] and "wwts caption" in lines[0]
    assert not (tmp_path / "r.json").exists()


def test_classify_refuses_labels_for_an_image_classifier(sample_images, tmp_path):
    """A closed-set classifier runs with its own id2label (tests/test_labels.py); ``--labels`` may
    only name some of its classes (tests/test_recogniser.py), others are refused in one line."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path / "vit"
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, num_labels=3)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    result = classify(sample_images, "--labels", "人,车", "-m", folder)
    assert result.exit_code == 2, result.output
    assert "closed-set model has no class '人'" in result.stderr and "LABEL_0" in result.stderr


# -- pickle weights -------------------------------------------------------------------------------


def _copy_without_weights(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dst


def test_pickle_only_weights_load_with_one_warning(tiny_clip, tmp_path, caplog):
    from transformers import ChineseCLIPModel

    folder = _copy_without_weights(tiny_clip, tmp_path / "pickled")
    model = ChineseCLIPModel.from_pretrained(tiny_clip)
    # transformers 4: save_pretrained(..., safe_serialization=False); transformers 5 dropped the
    # option, so the pickle file is written the way it was, with torch.save of the state dict.
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    with caplog.at_level(logging.WARNING, logger="wwts"):
        model, _ = models.load(str(folder))
    warnings = [r for r in caplog.records if r.name.startswith("wwts") and "pickle" in r.getMessage()]
    assert len(warnings) == 1 and "safetensors" in warnings[0].getMessage()
    assert hasattr(model, "get_text_features")


def test_safetensors_preferred_when_both_are_there(tiny_clip, tmp_path, caplog):
    folder = _copy_without_weights(tiny_clip, tmp_path / "both")
    for f in tiny_clip.glob("*.safetensors"):
        shutil.copy(f, folder / f.name)
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle at all")  # would fail if it were read
    assert models.weights_format(folder) == "safetensors"
    with caplog.at_level(logging.WARNING, logger="wwts"):
        models.load(str(folder))
    assert "pickle" not in caplog.text
