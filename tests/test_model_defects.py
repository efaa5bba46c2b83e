"""Issue 10, models and tasks: wrong architectures, non-finite scores, prompt templates, long labels,
the --labels message, GBK label files, pickle weights, hub messages and --lang zh (offline, tiny models)."""

from __future__ import annotations

import logging
import math
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import classify
from tests.tiny_caption_models import build_tiny_blip
from wwts.core import models
from wwts.core.config import RunConfig, fill_prompt, parse_labels, read_labels_file, validate_prompt_template
from wwts.core.errors import ModelLoadError, UsageError

LABELS = "人,车,动物"


def _error_lines(result) -> list[str]:
    """The ``error:`` lines of stderr (the start line may come first: it is printed before loading)."""
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if "error" in line.split(":", 1)[0]]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("blip") / "blip")


# -- 1. not a dual encoder; non-finite scores ------------------------------------------------------


def test_classify_refuses_a_captioning_checkpoint(tiny_blip, sample_images, tmp_path):
    result = classify(sample_images, "--labels", "人,车", "-m", tiny_blip, "--dtype", "float32",
                      "--out", tmp_path / "r.json")
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "BlipForConditionalGeneration" in lines[0] and "wwts caption" in lines[0]
    assert not (tmp_path / "r.json").exists()


def test_classify_refuses_labels_for_an_image_classifier(sample_images, tmp_path):
    """A closed-set classifier runs with its own id2label (tests/test_labels.py); labels for it
    are refused before its weights load."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path / "vit"
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, num_labels=3)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    result = classify(sample_images, "--labels", "人,车", "-m", folder)
    assert result.exit_code == 2, result.output
    assert "closed-set image classifier" in result.stderr and "--label-map" in result.stderr


def test_nonfinite_probabilities_become_error_records(tiny_clip, sample_images):
    from wwts.core import engine

    run = engine.start(RunConfig(task="classify", inputs=(sample_images,), labels=("人", "车"),
                                 model=str(tiny_clip), device="cpu", dtype="float32"))
    run.task.encoder.facts["logit_scale"] = float("nan")  # as a NaN learned temperature would give
    records = list(run)
    assert records and all(r.error and r.error.startswith("nonfinite:") for r in records)
    assert all(r.score is None and not r.top_k for r in records)


# -- 2. prompt templates ----------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["{}{}", "{} {x}", "{}}", "{0}", "没有占位符"])
def test_bad_prompt_template_exits_2_before_loading(tiny_clip, sample_images, monkeypatch, prompt):
    def no_load(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(models, "load", no_load)
    result = classify(sample_images, "--labels", "人,车", "--prompt", prompt, "-m", tiny_clip)
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and "--prompt" in lines[0] and "exactly one {}" in lines[0], result.stderr


@pytest.mark.parametrize("prompt", [None, "", "a photo of {}.", "{}"])
def test_good_prompt_templates_pass(prompt):
    validate_prompt_template(prompt)


def test_labels_with_braces_stay_literal(tiny_clip, sample_images):
    from wwts.core import engine

    assert fill_prompt("一张{}的照片。", "{0}{}") == "一张{0}{}的照片。"
    run = engine.start(RunConfig(task="classify", inputs=(sample_images / "astronaut.jpg",), labels=("{0}", "a{}b"),
                                 model=str(tiny_clip), device="cpu", dtype="float32", prompt="一张{}的照片。"))
    assert run.task.prompts == ["一张{0}的照片。", "一张a{}b的照片。"]


# -- 3. labels longer than the text tower -----------------------------------------------------------


def test_label_longer_than_the_text_tower_is_truncated_with_one_warning(tiny_clip, sample_images, caplog):
    from wwts.core import engine

    long_label = "猫" * 600  # 600 tokens; the tiny text tower has 64 positions
    with caplog.at_level(logging.WARNING, logger="wwts"):
        run = engine.start(RunConfig(task="classify", inputs=(sample_images / "astronaut.jpg",),
                                     labels=(long_label, "车"), model=str(tiny_clip), device="cpu", dtype="float32"))
        records = list(run)
    warnings = [r.getMessage() for r in caplog.records if "longer than" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "猫猫猫" in warnings[0] and long_label not in warnings[0] and "64" in warnings[0]
    assert records[0].error is None
    assert math.isclose(sum(t.score for t in records[0].top_k), 1.0, abs_tol=1e-4)


def test_long_label_through_the_cli_exits_0(tiny_clip, sample_images):
    result = classify(sample_images / "astronaut.jpg", "--labels", "猫" * 600 + ",车", "-m", tiny_clip)
    assert result.exit_code == 0, result.output
    assert "longer than" in result.stderr


# -- 4. the --labels message ------------------------------------------------------------------------


def test_unquoted_labels_with_a_space_say_what_happened(tiny_clip, sample_images):
    # `wwts classify photos --labels 人, 车`: the shell gives "人," to --labels and 车 as a PATH.
    result = classify(sample_images, "--labels", "人,", "车", "-m", tiny_clip)
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "'人,'" in lines[0] and "，" not in lines[0]
    assert "after the last comma" in lines[0] and "quote" in lines[0]


@pytest.mark.parametrize("text, where", [(",人", "before the first comma"), ("人,,车", "between two commas"),
                                         (",", "no labels"), ("人，", "after the last comma")])
def test_empty_label_messages_quote_the_users_text(text, where):
    with pytest.raises(UsageError) as info:
        parse_labels(text)
    assert where in str(info.value) and f"--labels {shlex.quote(text)}:" in str(info.value)


# -- 5. label files in GBK --------------------------------------------------------------------------


def test_gbk_labels_file_is_read_with_a_warning(tmp_path, caplog):
    path = tmp_path / "labels.txt"
    path.write_bytes("人\n汽车 # 注释\n动物\n".encode("gbk"))
    with caplog.at_level(logging.WARNING, logger="wwts"):
        assert read_labels_file(path) == ("人", "汽车", "动物")
    assert "GB18030" in caplog.text and "UTF-8" in caplog.text


def test_utf8_with_bom_and_utf16_labels_files(tmp_path, caplog):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeff人\n车\n".encode("utf-8"))
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("人\n车\n".encode("utf-16"))
    with caplog.at_level(logging.WARNING, logger="wwts"):
        assert read_labels_file(bom) == ("人", "车")
        assert read_labels_file(utf16) == ("人", "车")
    assert not caplog.records


def test_labels_file_in_no_known_encoding_is_one_clear_error(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(b"cat\n\x80\xff dog\n")
    with pytest.raises(UsageError, match="not UTF-8.*GB18030.*save it as UTF-8"):
        read_labels_file(path)


def test_gbk_labels_file_through_the_cli(tiny_clip, sample_images, tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("人\n车\n".encode("gbk"))
    result = classify(sample_images / "astronaut.jpg", "--labels-file", path, "-m", tiny_clip)
    assert result.exit_code == 0, result.output
    assert "GB18030" in result.stderr
    assert "人" in result.stdout


# -- 6. pickle weights -------------------------------------------------------------------------------


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


# -- 7. hub messages ---------------------------------------------------------------------------------


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


# -- 8. --lang zh with a model that takes no instruction -----------------------------------------------


def test_lang_zh_with_blip_says_it_captions_in_its_own_language(tiny_blip, sample_images):
    from typer.testing import CliRunner

    from wwts.cli.app import app

    result = CliRunner().invoke(app, ["caption", str(sample_images / "astronaut.jpg"), "--lang", "zh",
                                      "-m", str(tiny_blip), "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if "--lang zh" in line]
    assert len(warning) == 1, result.stderr
    assert "takes no instruction" in warning[0] and models.default_model("caption", "zh") in warning[0]
