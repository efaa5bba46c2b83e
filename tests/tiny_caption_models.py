"""Builders of tiny random captioning models, saved with ``save_pretrained`` like real checkpoints.

Each builder writes a complete model folder (``config.json``, weights, tokenizer, image processor,
chat template where the family has one) that ``wwts.core.models.load`` and ``wwts caption --model
FOLDER`` load exactly as they load a downloaded model. Nothing is downloaded: configs are the real
transformers config classes with hidden sizes of 32 and one or two layers (the shape transformers'
own model tests use), tokenizers are built in memory. Weights are random, so captions are
meaningless strings; greedy decoding makes them deterministic.

Two traps these builders avoid: the image processor's output size must equal the vision config's
``image_size``, and every special token id in the model config must exist in the tokenizer.

Builders: ``build_tiny_blip``, ``build_tiny_git``, ``build_tiny_vision_encoder_decoder`` (ViT-GPT2),
``build_tiny_florence2`` and ``build_tiny_chat_vlm`` (Qwen2-VL, or Qwen3-VL with
``family="qwen3_vl"``); each takes the folder to write and returns it. A few tenths of a second each.

Usage::

    from tests.tiny_caption_models import build_tiny_blip, build_tiny_chat_vlm
    folder = build_tiny_blip(tmp_path / "blip")       # -> tmp_path / "blip"
"""

from __future__ import annotations

from pathlib import Path

import torch

#: Words of the tiny WordPiece vocabularies (BLIP, GIT): enough for prompts like "a photo of".
WORDS = ("a an the of in on with and is are photo picture image photography cat dog car person people man "
         "woman child tree flower house street sky water food table red green blue white black small big "
         "two three sitting standing parked near").split()
#: Special tokens of the Qwen-VL chat format.
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")
#: A ChatML-style template in the Qwen-VL layout: an image becomes
#: ``<|vision_start|><|image_pad|><|vision_end|>``, which the processor expands to one
#: ``<|image_pad|>`` per visual token.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: Tiny image side of the BLIP / GIT / ViT builders (vision ``image_size`` == processor size).
TINY_IMAGE_SIZE = 32
#: Weight init std of the BLIP / GIT / ViT-GPT2 builders. BLIP's vision default (1e-10) makes every
#: image look the same to the decoder; 0.2 gives different captions for different images, so a
#: test can notice captions coming back in the wrong order.
INIT_STD = 0.2


def _save(model: torch.nn.Module, parts: list, path: Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    for part in parts:
        part.save_pretrained(path)
    return path


def _wordpiece_tokenizer(path: Path, extra_specials: tuple[str, ...] = ()):
    """A lower-casing ``BertTokenizer`` from a written vocab.txt: specials, words, ASCII letters."""
    from transformers import BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(".,!?")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters, *(f"##{ch}" for ch in letters)]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab_file))
    if extra_specials:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_specials)})
    vocab_file.unlink()  # save_pretrained writes the tokenizer's own files
    return tokenizer


def _byte_level_tokenizer(cls, specials: tuple[str, ...], **kwargs):
    """A byte-level BPE tokenizer without merges: one token per UTF-8 byte, so any text (Chinese
    included) encodes without unknown tokens, plus ``specials`` as special tokens."""
    from tokenizers import pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in specials:
        vocab[token] = len(vocab)
    return cls(vocab=vocab, merges=[], **kwargs)


def build_tiny_blip(path: Path) -> Path:
    """Tiny random ``BlipForConditionalGeneration`` + ``BlipProcessor`` saved to ``path``.

    32 px images (patch 8), hidden size 32, 1 vision and 2 text layers; WordPiece tokenizer with
    BLIP's ``[DEC]`` as BOS and ``[SEP]`` ending the caption, as in Salesforce/blip-image-captioning-base.

    Returns:
        ``path``.
    """
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    path = Path(path)
    tokenizer = _wordpiece_tokenizer(path, ("[DEC]",))
    tokenizer.bos_token = "[DEC]"
    dec_id = tokenizer.convert_tokens_to_ids("[DEC]")
    config = BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                         projection_dim=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=dec_id, eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                         sep_token_id=tokenizer.sep_token_id, initializer_range=INIT_STD),
        vision_config=dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=TINY_IMAGE_SIZE, patch_size=8,
                           initializer_range=INIT_STD),
        projection_dim=32, initializer_range=INIT_STD,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    size = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size=size), tokenizer=tokenizer)
    return _save(model, [processor], path)


def build_tiny_blip2(path: Path) -> Path:
    """Tiny random ``Blip2ForConditionalGeneration`` (OPT decoder) + ``Blip2Processor`` at ``path``.

    Laid out like Salesforce/blip2-opt-2.7b: a BLIP image processor, a byte-level BPE tokenizer
    with ``</s>`` as BOS/EOS and an ``<image>`` token that the processor repeats once per query
    token (4 here, 32 in the real model) in front of the text. 32 px images (patch 8); vision,
    Q-Former and OPT of width 32.

    Returns:
        ``path``.
    """
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, GPT2Tokenizer
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    specials = ("<pad>", "</s>", "<unk>", "<image>")
    tokenizer = _byte_level_tokenizer(GPT2Tokenizer, specials, bos_token="</s>", eos_token="</s>",
                                      pad_token="<pad>", unk_token="<unk>")
    tokenizer.image_token = "<image>"
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    queries = 4
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=TINY_IMAGE_SIZE, patch_size=8, initializer_range=INIT_STD),
        qformer_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            encoder_hidden_size=32, vocab_size=len(tokenizer), initializer_range=INIT_STD),
        text_config=dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=32, word_embed_proj_dim=32,
                         num_hidden_layers=2, ffn_dim=64, num_attention_heads=2, max_position_embeddings=128,
                         bos_token_id=ids["</s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
                         init_std=INIT_STD),
        num_query_tokens=queries, image_token_index=ids["<image>"], initializer_range=INIT_STD,
    )
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config).eval()
    size = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    processor = Blip2Processor(image_processor=BlipImageProcessorPil(size=size), tokenizer=tokenizer,
                               num_query_tokens=queries)
    return _save(model, [processor], Path(path))


def build_tiny_git(path: Path) -> Path:
    """Tiny random ``GitForCausalLM`` + ``GitProcessor`` (CLIP image processor, WordPiece) at ``path``.

    Returns:
        ``path``.
    """
    from transformers import GitConfig, GitForCausalLM, GitProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    path = Path(path)
    tokenizer = _wordpiece_tokenizer(path)
    config = GitConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=TINY_IMAGE_SIZE, patch_size=8, initializer_range=INIT_STD),
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=INIT_STD,
    )
    torch.manual_seed(0)
    model = GitForCausalLM(config).eval()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": TINY_IMAGE_SIZE},
                                            crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    return _save(model, [GitProcessor(image_processor=image_processor, tokenizer=tokenizer)], path)


def build_tiny_vision_encoder_decoder(path: Path) -> Path:
    """Tiny random ViT-GPT2 ``VisionEncoderDecoderModel`` (the layout of nlpconnect/vit-gpt2-image-captioning:
    ``preprocessor_config.json`` + GPT-2 tokenizer files, no processor class) at ``path``.

    Returns:
        ``path``.
    """
    from transformers import (GPT2Config, GPT2Tokenizer, ViTConfig, VisionEncoderDecoderConfig,
                              VisionEncoderDecoderModel)
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    tokenizer = _byte_level_tokenizer(GPT2Tokenizer, ("<|endoftext|>",))
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    encoder = ViTConfig(image_size=TINY_IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, initializer_range=INIT_STD)
    decoder = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                         bos_token_id=eos, eos_token_id=eos, is_decoder=True, add_cross_attention=True,
                         initializer_range=INIT_STD)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = eos
    config.pad_token_id = eos
    config.eos_token_id = eos
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config).eval()
    image_processor = ViTImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    return _save(model, [tokenizer, image_processor], path)


def build_tiny_florence2(path: Path) -> Path:
    """Tiny random ``Florence2ForConditionalGeneration`` + ``Florence2Processor`` at ``path``.

    DaViT vision tower with 2 stages (64 px images → 8 x 8 = 64 visual tokens, plus one, which is
    the processor's ``image_seq_length``), a 1 + 1 layer BART of width 32, and a byte-level BART
    tokenizer with Florence-2's ``<image>`` token.

    Returns:
        ``path``.
    """
    from transformers import BartTokenizer, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    path = Path(path)
    tokenizer = _byte_level_tokenizer(BartTokenizer, ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
                                      extra_special_tokens={"image_token": "<image>"})
    text = dict(model_type="bart", vocab_size=len(tokenizer) + 4, d_model=32, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.eos_token_id,
                init_std=INIT_STD)
    vision = dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                  patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 2], num_groups=[2, 2],
                  window_size=2, projection_dim=32, drop_path_rate=0.0, initializer_range=INIT_STD)
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config).eval()
    side = 64
    image_processor = CLIPImageProcessorPil(size={"height": side, "width": side}, do_center_crop=False,
                                            image_seq_length=(side // 8) ** 2 + 1)
    return _save(model, [Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)], path)


def build_tiny_chat_vlm(path: Path, family: str = "qwen2_vl") -> Path:
    """Tiny random Qwen-VL chat model (``qwen2_vl``, ``qwen2_5_vl`` or ``qwen3_vl``) with its processor
    files at ``path``.

    Vision: 1-2 layers, width 32, patch 14 (Qwen2-VL, Qwen2.5-VL) or 16 (Qwen3-VL), 2 x 2 merge; text: 2 layers,
    hidden 32. The tokenizer is byte-level (any text encodes) plus the Qwen-VL special tokens; the
    chat template is ``QWEN_CHAT_TEMPLATE``. Saved as a hub checkpoint is laid out: weights and
    config, ``tokenizer.json`` / ``tokenizer_config.json``, ``preprocessor_config.json``,
    ``chat_template.jinja``. No video processor config is written: the processor class is loaded
    image-only when torchvision is absent (see ``wwts.core.tasks.caption``).

    Returns:
        ``path``.
    """
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(path)
    tokenizer = _byte_level_tokenizer(Qwen2Tokenizer, QWEN_SPECIAL_TOKENS,
                                      additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]))
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    token_ids = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                     vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    text = dict(vocab_size=len(tokenizer) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        patch = 14
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        config = Qwen2VLConfig(
            text_config=text,
            vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=patch,
                               spatial_merge_size=2, temporal_patch_size=2),
            **token_ids)
        model_class = Qwen2VLForConditionalGeneration
    elif family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        patch = 14
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        config = Qwen2_5_VLConfig(
            text_config=text,
            # window attention in block 0, full attention in block 1, as the real model alternates
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                               patch_size=patch, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                               fullatt_block_indexes=[1]),
            **token_ids)
        model_class = Qwen2_5_VLForConditionalGeneration
    elif family == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        patch = 16
        text.update(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                  "mrope_section": [2, 3, 3], "mrope_interleaved": True})
        config = Qwen3VLConfig(
            text_config=text,
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=patch,
                               spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                               num_position_embeddings=64, deepstack_visual_indexes=[1]),
            **token_ids)
        model_class = Qwen3VLForConditionalGeneration
    else:
        raise ValueError(f"family must be qwen2_vl, qwen2_5_vl or qwen3_vl, got {family!r}")
    torch.manual_seed(0)
    model = model_class(config).eval()
    factor = patch * 2
    # The pixel range of the real checkpoints (up to 1280 visual tokens): wwts caps it.
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                               min_pixels=factor * factor * 4, max_pixels=factor * factor * 1280)
    tokenizer.chat_template = None
    _save(model, [tokenizer, image_processor], path)
    (path / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE, encoding="utf-8")
    return path
