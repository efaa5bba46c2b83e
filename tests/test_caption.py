"""Captioning task: family detection, prompts, batched generation, on tiny random models (offline).

The models are built by ``tests.tiny_caption_models`` and loaded through ``load_task`` /
``core.models.load`` exactly as ``--model FOLDER`` loads them. Weights are random, so captions are
meaningless: the tests check counts, order, determinism, what is sliced off and token budgets.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from tests.tiny_caption_models import (build_tiny_blip, build_tiny_blip2, build_tiny_chat_vlm, build_tiny_florence2, build_tiny_git,
                                       build_tiny_vision_encoder_decoder)
from wwts.core import models
from wwts.core.config import RunConfig
from wwts.core.errors import ModelLoadError, UsageError
from wwts.core.output.records import CaptionResult
from wwts.core.tasks.caption import (CHAT_MAX_PIXELS, CHAT_PROMPTS, CaptionTask, _load_dtype, detect_family,
                                     load_task, resolve_prompt)

CPU = torch.device("cpu")
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_images"
BUILDERS = {
    "blip": build_tiny_blip,
    "blip-2": build_tiny_blip2,
    "git": build_tiny_git,
    "vision-encoder-decoder": build_tiny_vision_encoder_decoder,
    "florence2": build_tiny_florence2,
    "qwen2_vl": lambda p: build_tiny_chat_vlm(p, "qwen2_vl"),
    "qwen2_5_vl": lambda p: build_tiny_chat_vlm(p, "qwen2_5_vl"),
    "qwen3_vl": lambda p: build_tiny_chat_vlm(p, "qwen3_vl"),
}
FAMILY_OF = {"blip": "blip", "blip-2": "blip-2", "git": "git", "vision-encoder-decoder": "vision-encoder-decoder",
             "florence2": "florence2", "qwen2_vl": "chat", "qwen2_5_vl": "chat",
             "qwen3_vl": "chat"}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("caption-models")
    return {kind: build(root / kind.replace("-", "_")) for kind, build in BUILDERS.items()}


def _drawn_images() -> list[Image.Image]:
    """Four different RGB images of different sizes and aspect ratios."""
    out = []
    for i, (size, colour) in enumerate([((320, 240), (200, 30, 30)), ((180, 360), (20, 160, 60)),
                                        ((256, 256), (30, 60, 200)), ((500, 200), (230, 220, 40))]):
        im = Image.new("RGB", size, colour)
        draw = ImageDraw.Draw(im)
        draw.ellipse([size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4], fill=(255 - 60 * i, 255, 40 * i))
        draw.line([0, 0, size[0], size[1]], fill=(0, 0, 0), width=5)
        out.append(im)
    return out


def _sample_photos(limit: int = 2) -> list[Image.Image]:
    """Up to ``limit`` photos from sample_images/ (decoded small), if the folder has any."""
    photos = []
    if SAMPLE_DIR.is_dir():
        for path in sorted(SAMPLE_DIR.iterdir()):
            if path.suffix.lower() not in {".jpg", ".jpeg", ".png", ".webp"} or len(photos) >= limit:
                continue
            with Image.open(path) as im:
                im.draft("RGB", (640, 640))
                im = im.convert("RGB")
                im.thumbnail((640, 640))
                photos.append(im)
    return photos


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return _drawn_images() + _sample_photos()


def _config(tmp_path: Path, model: Path | str | None, **kwargs) -> RunConfig:
    kwargs.setdefault("max_new_tokens", 8)
    return RunConfig(task="caption", inputs=(tmp_path,), model=None if model is None else str(model), **kwargs)


def _load(tmp_path: Path, model: Path, dtype: torch.dtype = torch.float32, **kwargs) -> CaptionTask:
    task = load_task(_config(tmp_path, model, **kwargs), CPU, dtype)
    task.to(CPU, dtype)
    task.setup()
    return task


def _captions(task: CaptionTask, outputs) -> list[dict]:
    """The task fields ``task.postprocess`` sets on blank base records: ``[{"caption": str}]``
    (``outputs``: ``forward``'s ``(sequences, prompt_length)``)."""
    bases = [CaptionResult(path=f"{i}.jpg") for i in range(outputs[0].shape[0])]
    return [{"caption": record.caption} for record in task.postprocess(outputs, bases)]


def _run(task: CaptionTask, batch: list[Image.Image]):
    inputs = task.collate([task.prepare(image) for image in batch])
    with torch.inference_mode():
        outputs = task.forward(inputs)
    return inputs, outputs, _captions(task, outputs)


# --- family detection and prompts (configs only, no weights) ----------------------------------


def _configs_by_family():
    from transformers import (Blip2Config, BlipConfig, Florence2Config, GitConfig, GPT2Config, LlavaConfig,
                              Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig, SmolVLMConfig,
                              VisionEncoderDecoderConfig, ViTConfig)

    return [
        (BlipConfig(), "blip"),
        (Blip2Config(), "blip-2"),
        (GitConfig(), "git"),
        (VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(), GPT2Config()), "vision-encoder-decoder"),
        (Florence2Config(), "florence2"),
        (Qwen2VLConfig(), "chat"),
        (Qwen2_5_VLConfig(), "chat"),
        (Qwen3VLConfig(), "chat"),
        (SmolVLMConfig(), "chat"),
        (LlavaConfig(), "chat"),
    ]


def test_detect_family_from_config_model_type():
    for config, family in _configs_by_family():
        assert detect_family(config) == family, config.model_type


def test_detect_family_reads_the_config_not_the_folder_name(tmp_path):
    from transformers import BlipConfig

    folder = tmp_path / "Qwen2-VL-2B-Instruct"  # a misleading name
    BlipConfig(architectures=["BlipForConditionalGeneration"]).save_pretrained(folder)
    assert detect_family(models.load_config(str(folder))) == "blip"


def test_detect_family_refuses_non_captioning_models():
    from transformers import BlipConfig, CLIPConfig

    with pytest.raises(ModelLoadError, match="not an image-captioning model"):
        detect_family(CLIPConfig())
    # Salesforce/blip-vqa-base shares model_type "blip" with the captioning checkpoints.
    with pytest.raises(ModelLoadError, match="BlipForQuestionAnswering"):
        detect_family(BlipConfig(architectures=["BlipForQuestionAnswering"]))


def test_resolve_prompt_defaults_and_overrides(tmp_path):
    cfg = _config(tmp_path, None)
    assert resolve_prompt("blip", cfg) is None
    assert resolve_prompt("git", cfg) is None
    assert resolve_prompt("florence2", cfg) == "<CAPTION>"
    assert resolve_prompt("chat", cfg) == CHAT_PROMPTS["en"]
    assert resolve_prompt("chat", _config(tmp_path, None, lang="zh")) == "用一句话描述这张图片。"
    assert resolve_prompt("blip", _config(tmp_path, None, prompt="a photography of")) == "a photography of"
    assert resolve_prompt("chat", _config(tmp_path, None, lang="zh", prompt="这是什么？")) == "这是什么？"
    assert resolve_prompt("blip", _config(tmp_path, None, prompt="  ")) is None
    assert resolve_prompt("vision-encoder-decoder", cfg) is None
    with pytest.raises(UsageError, match="--prompt"):
        resolve_prompt("vision-encoder-decoder", _config(tmp_path, None, prompt="a photo of"))
    with pytest.raises(UsageError, match="task token"):
        resolve_prompt("florence2", _config(tmp_path, None, prompt=""))


def test_chinese_default_model_is_a_qwen_vl_chat_model():
    name = models.default_model("caption", "zh")
    assert name.startswith("Qwen/") and "VL" in name and name.endswith("Instruct")
    assert models.default_model("caption", "en") == "Salesforce/blip-image-captioning-base"


def test_load_dtype_policy():
    assert _load_dtype("blip", CPU, torch.bfloat16) == torch.float32  # small model: engine autocasts
    assert _load_dtype("chat", CPU, torch.float32) == torch.float32
    assert _load_dtype("chat", CPU, torch.bfloat16) == torch.bfloat16
    assert _load_dtype("chat", CPU, torch.float16) == torch.float32
    assert _load_dtype("chat", torch.device("cuda"), torch.float16) == torch.float16


# --- the real load path and batched generation --------------------------------------------------


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_batch_gives_the_same_captions_as_one_image_at_a_time(kind, tiny_models, images, tmp_path):
    task = _load(tmp_path, tiny_models[kind])
    assert task.name == "caption" and task.record_type is CaptionResult
    assert task.family == FAMILY_OF[kind]
    inputs, outputs, batched = _run(task, images)
    assert all(t.device.type == "cpu" for t in inputs.values())
    assert len(batched) == len(images)
    assert all(set(r) == {"caption"} and isinstance(r["caption"], str) for r in batched)
    assert all(r["caption"] == r["caption"].strip() and "\n" not in r["caption"] for r in batched)
    one_by_one = [_run(task, [im])[2][0] for im in images]
    assert batched == one_by_one
    # Different images give different captions (random weights still see the image), so a
    # mix-up of the order would have shown above.
    assert len({r["caption"] for r in batched}) > 1


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_max_new_tokens_is_honoured(kind, tiny_models, images, tmp_path):
    task = _load(tmp_path, tiny_models[kind], max_new_tokens=3)
    _, outputs, captions = _run(task, images[:3])
    assert outputs[0].shape[1] - outputs[1] <= 3
    assert len(captions) == 3


@pytest.mark.parametrize("kind", ["blip", "qwen2_vl"])
def test_min_new_tokens_forces_exactly_that_many_tokens(kind, tiny_models, images, tmp_path):
    task = _load(tmp_path, tiny_models[kind], max_new_tokens=5, min_new_tokens=5)
    _, outputs, _ = _run(task, images[:2])
    new = outputs[0][:, outputs[1]:]
    assert new.shape[1] == 5
    eos = task.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    if task.family == "blip":
        eos = {task.model.config.text_config.sep_token_id}
    assert not (set(new[:, :4].flatten().tolist()) & eos)


def test_blip_prefix_is_fed_to_generate_and_not_returned(tiny_models, images, tmp_path):
    task = _load(tmp_path, tiny_models["blip"], prompt="a photo of")
    inputs, outputs, captions = _run(task, images[:2])
    prefix_ids = inputs["input_ids"][0, 1:-1].tolist()  # between [CLS] and [SEP]
    assert task.tokenizer.decode(prefix_ids) == "a photo of"
    # generate's output starts with [DEC] + the prefix; the caption is what follows it.
    assert outputs[1] == 1 + len(prefix_ids)
    for row, caption in zip(outputs[0], captions):
        assert row[1:outputs[1]].tolist() == prefix_ids
        rest = task.tokenizer.decode(row[outputs[1]:], skip_special_tokens=True)
        assert caption["caption"] == " ".join(rest.split())
    info = task.run_info()
    assert info.pop("store").endswith(".sqlite")  # the caption store's file (test_caption_store.py)
    assert info == {"prompt": "a photo of", "max_new_tokens": 8, "num_beams": 1, "family": "blip"}


def test_git_prefix_is_not_returned(tiny_models, images, tmp_path):
    task = _load(tmp_path, tiny_models["git"], prompt="a photo of")
    inputs, outputs, _ = _run(task, images[:2])
    assert inputs["input_ids"][0, 0].item() == task.tokenizer.cls_token_id
    assert outputs[1] == inputs["input_ids"].shape[1] == 4  # [CLS] a photo of
    assert torch.equal(outputs[0][:, :4], inputs["input_ids"])


def test_blip2_prompt_after_the_query_tokens_is_not_returned(tiny_models, images, tmp_path):
    task = _load(tmp_path, tiny_models["blip-2"], prompt="a photo of")
    inputs, outputs, captions = _run(task, images[:2])
    ids = inputs["input_ids"]
    image_id = task.model.config.image_token_index
    assert ids[0, :4].tolist() == [image_id] * 4  # one <image> per Q-Former query, then the text
    assert task.tokenizer.decode(ids[0, 4:], skip_special_tokens=True).strip() == "a photo of"
    # a decoder-only LM returns the whole input before the new tokens: all of it is sliced off
    assert outputs[1] == ids.shape[1]
    assert torch.equal(outputs[0][:, :ids.shape[1]], ids)
    for row, caption in zip(outputs[0], captions):
        rest = task.tokenizer.decode(row[outputs[1]:], skip_special_tokens=True)
        assert caption["caption"] == " ".join(rest.split())


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_chat_prompt_goes_through_the_chat_template_and_is_sliced_off(kind, tiny_models, images, tmp_path):
    task = _load(tmp_path, tiny_models[kind], lang="zh")
    assert task.prompt == "用一句话描述这张图片。"
    assert task.tokenizer.padding_side == "left"
    inputs, outputs, captions = _run(task, images[:3])
    ids = inputs["input_ids"]
    text = task.tokenizer.decode(ids[0], skip_special_tokens=False)
    assert "<|im_start|>user\n<|vision_start|><|image_pad|>" in text
    assert text.endswith("用一句话描述这张图片。<|im_end|>\n<|im_start|>assistant\n")
    # Images of different sizes give prompts of different lengths: left padding lines them up.
    assert (inputs["attention_mask"][:, -1] == 1).all() and (inputs["attention_mask"] == 0).any()
    assert outputs[1] == ids.shape[1]
    assert torch.equal(outputs[0][:, :ids.shape[1]], ids)
    for caption in captions:
        assert "用一句话" not in caption["caption"] and "assistant" not in caption["caption"]
    assert task.run_info()["family"] == "chat"


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_chat_image_resolution_is_capped(kind, tiny_models, tmp_path):
    task = _load(tmp_path, tiny_models[kind])
    assert task.input_size == 448  # the checkpoint allows ~1280 visual tokens; wwts caps at 448 x 448
    big = Image.new("RGB", (2400, 1800), (90, 120, 30))
    inputs = task.collate([task.prepare(image) for image in [big]])
    patch = task.image_processor.patch_size
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert t == 1 and h * w * patch * patch <= CHAT_MAX_PIXELS
    assert inputs["pixel_values"].shape[0] == h * w
    smaller = _load(tmp_path, tiny_models[kind], extra={"max_pixels": 224 * 224})
    assert smaller.input_size == 224
    t2, h2, w2 = smaller.collate([smaller.prepare(image) for image in [big]])["image_grid_thw"][0].tolist()
    assert h2 * w2 < h * w


def test_input_size_of_fixed_size_families(tiny_models, tmp_path):
    for kind in ("blip", "git", "vision-encoder-decoder"):
        assert _load(tmp_path, tiny_models[kind]).input_size == 32, kind
    assert _load(tmp_path, tiny_models["florence2"]).input_size == 64


def test_florence2_task_token_becomes_its_question_and_only_new_tokens_are_returned(tiny_models, images, tmp_path):
    task = _load(tmp_path, tiny_models["florence2"])
    assert task.prompt == "<CAPTION>" and task.run_info()["family"] == "florence2"
    inputs, outputs, captions = _run(task, images[:2])
    text = task.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True)
    assert text == "What does the image describe?"  # the processor's question for <CAPTION>
    # Encoder-decoder: the output is the decoder's, starting with its start token only.
    assert outputs[1] == 1
    assert (outputs[0][:, 0] == task.model.generation_config.decoder_start_token_id).all()
    assert all("What does the image" not in c["caption"] for c in captions)


def test_vision_encoder_decoder_refuses_a_prompt_before_loading_weights(tiny_models, tmp_path):
    with pytest.raises(UsageError, match="--prompt"):
        load_task(_config(tmp_path, tiny_models["vision-encoder-decoder"], prompt="a photo of"), CPU, torch.float32)


def test_chat_processor_loads_without_torchvision(tiny_models):
    """transformers' AutoProcessor needs torchvision for the video processor; wwts loads image-only."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        pytest.skip("torchvision is installed: AutoProcessor works as is")
    try:  # transformers 5.23: "Qwen2VLVideoProcessor requires the Torchvision library"
        AutoProcessor.from_pretrained(tiny_models["qwen2_vl"])
    except ImportError as exc:
        assert "orchvision" in str(exc)
    task = load_task(_config(tiny_models["qwen2_vl"], tiny_models["qwen2_vl"]), CPU, torch.float32)
    assert type(task.processor).__name__ == "Qwen2VLProcessor"
    assert not hasattr(task.processor, "video_processor")


@pytest.mark.parametrize("kind", ["blip", "qwen3_vl"])
def test_bfloat16_autocast_and_beam_search(kind, tiny_models, images, tmp_path):
    task = _load(tmp_path, tiny_models[kind], dtype=torch.bfloat16, num_beams=2, repetition_penalty=1.2)
    expected_weights = torch.bfloat16 if task.family == "chat" else torch.float32
    assert next(task.model.parameters()).dtype == expected_weights
    inputs = task.collate([task.prepare(image) for image in images[:2]])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = task.forward(inputs)
    captions = _captions(task, outputs)
    assert len(captions) == 2 and all(isinstance(c["caption"], str) for c in captions)
    assert task.generate_kwargs["num_beams"] == 2 and task.generate_kwargs["do_sample"] is False


def test_not_a_captioning_model_fails_before_loading_weights(tmp_path):
    from transformers import CLIPConfig

    folder = tmp_path / "clip"
    CLIPConfig().save_pretrained(folder)  # no weights at all: only the config is read
    with pytest.raises(ModelLoadError, match="not an image-captioning model"):
        load_task(_config(tmp_path, folder), CPU, torch.float32)


def test_lang_zh_with_a_non_chat_model_warns(tiny_models, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="wwts.core.tasks.caption"):
        task = load_task(_config(tmp_path, tiny_models["blip"], lang="zh"), CPU, torch.float32)
    assert task.prompt is None
    assert "--lang zh" in caplog.text
