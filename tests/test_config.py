"""The run settings a user types (``core/config.py``): prompt templates (exactly one ``{}``, labels
with braces stay literal), the --labels message, and label files in GBK, UTF-8 with a BOM or UTF-16."""

from __future__ import annotations

import logging
import shlex

import pytest

from tests.helpers import classify
from wwts.core import models
from wwts.core.config import RunConfig, fill_prompt, parse_labels, read_labels_file, validate_prompt_template
from wwts.core.errors import UsageError


def _error_lines(result) -> list[str]:
    """The ``error:`` lines of stderr (the start line may come first: it is printed before loading)."""
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if "error" in line.split(":", 1)[0]]


# -- prompt templates ----------------------------------------------------------------------------


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


# -- the --labels message ------------------------------------------------------------------------


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


# -- label files in GBK --------------------------------------------------------------------------


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
