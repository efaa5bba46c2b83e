"""``TextTokenizer`` (the ``tokenizers``-only label tokenizer) against transformers' own tokenizer.

Every comparison loads transformers' ``AutoTokenizer`` from the same folder and asks for exactly the
same arrays: ids, attention mask and token type ids, padded to the longest row or to a fixed length,
and the untruncated lengths. Folders: the ``save_pretrained`` layout of ``build_tiny_chinese_clip``
(tokenizer.json), the hub layout of OFA-Sys/chinese-clip-vit-base-patch16 (vocab.txt +
tokenizer_config.json + special_tokens_map.json, no tokenizer.json), a variant of it with other
config flags, and the tiny OpenAI-style CLIP (byte-level BPE, no token type ids).
"""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from wwts.core.errors import NotReproducible
from wwts.core.models import TextTokenizer

VOCAB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "vocab"
TEMPLATE = "一张{}的照片。"
FALLBACK_LABELS = ["猫", "狗", "金鱼", "大白鲨", "咖啡", "火箭", "宇航员"]
HOSTILE = [
    "Cat 猫 and DOG 狗", "猫CAT猫", "a photo of a cat", "ÉCOLE café naïve Ångström", "e\u0301 combining",
    "ＡＢＣ　猫（全角）！", "１２３ｋｇ", "猫🐱😀狗", "𠀀𪚥 rare", "\u4e00\u9fa5\u3400", "", " ", "\t\n\r",
    "\x00\x07猫\u200b\ufeff\ufffd", "猫\u3000狗\xa0鸟", "a" * 150, "猫" * 100, "very long label " * 20,
    "[MASK] 猫 [CLS]", "[mask]", "İstanbul ǅ ß", "猫, 狗; (鸟) - \"花\"", "日本語のテキスト", "한국어", "Ελληνικά",
]
#: Characters left out of the hub-layout vocabulary, so ``[UNK]`` shows up.
UNKNOWN = set("🐱😀𠀀𪚥한국어Ελληνικά")
ENGLISH = ["a", "photo", "of", "the", "cat", "dog", "and", "very", "long", "label", "ca", "##fe", "##t", "ecole",
           "na", "##ive", "##s", "is", "##tan", "##bul"]
SPECIALS = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def labels() -> list[str]:
    """Every label of the shared vocabularies (Chinese ImageNet-1k names), or a few when absent."""
    found = [line.strip() for path in sorted(VOCAB_DIR.glob("*.txt"))
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return found or FALLBACK_LABELS


LABELS = labels()
TEXTS = [TEMPLATE.format(label) for label in LABELS] + LABELS + HOSTILE + [TEMPLATE.format(t) for t in HOSTILE]


def hub_vocab(texts: list[str]) -> list[str]:
    """A vocab.txt laid out like the Chinese RoBERTa-wwm one Chinese-CLIP ships ([PAD] 0, [UNK] 100,
    [CLS] 101, ...), holding each character of ``texts`` (also lower-cased, unaccented and as a
    ``##`` piece) but those of ``UNKNOWN``, plus some English word pieces."""
    chars: dict[str, None] = {}
    for text in texts:
        for ch in text + text.lower() + unicodedata.normalize("NFD", text.lower()):
            if not ch.isspace() and unicodedata.category(ch)[0] != "C" and ch not in UNKNOWN:
                chars[ch] = None
    return list(dict.fromkeys(SPECIALS + ENGLISH + list(chars) + [f"##{c}" for c in chars]))


def write_hub_layout(folder: Path, **config) -> Path:
    """The tokenizer files of OFA-Sys/chinese-clip-vit-base-patch16 (config values overridable)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(hub_vocab(TEXTS)) + "\n", encoding="utf-8")
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}
    settings = {"do_lower_case": True, "do_basic_tokenize": True, "never_split": None, **specials,
                "tokenize_chinese_chars": True, "strip_accents": None, "special_tokens_map_file": None,
                "tokenizer_class": "BertTokenizer", "model_max_length": 1000000000000000019884624838656}
    settings.update(config)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")
    return folder


@pytest.fixture(scope="module", params=["tiny-chinese-clip", "hub", "hub-variant", "tiny-clip"])
def pair(request, tmp_path_factory):
    """``(TextTokenizer, transformers tokenizer)`` loaded from the same folder."""
    from transformers import AutoTokenizer

    from tests.tiny_models import build_tiny_chinese_clip, build_tiny_clip

    base = tmp_path_factory.mktemp("tok")
    folder = {
        "tiny-chinese-clip": lambda: build_tiny_chinese_clip(base / "cc"),
        "tiny-clip": lambda: build_tiny_clip(base / "clip"),
        "hub": lambda: write_hub_layout(base / "hub"),
        "hub-variant": lambda: write_hub_layout(base / "hub2", do_lower_case=False, strip_accents=True,
                                                tokenize_chinese_chars=False, model_max_length=52,
                                                padding_side="left", truncation_side="left"),
    }[request.param]()
    return TextTokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)


def assert_same(ours: dict[str, np.ndarray], theirs) -> None:
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == np.int64 and ours[key].shape == value.shape, key
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


@pytest.mark.parametrize("max_length", [52, 8])
def test_padded_batch_matches_transformers(pair, max_length):
    ours, theirs = pair
    expected = theirs(TEXTS, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    assert_same(ours(TEXTS, max_length), expected)


def test_each_hostile_text_alone_matches(pair):
    ours, theirs = pair
    for text in HOSTILE:
        assert_same(ours([text], 52), theirs([text], padding=True, truncation=True, max_length=52,
                                             return_tensors="np"))


def test_default_max_length_is_model_max_length(pair):
    ours, theirs = pair
    assert_same(ours(HOSTILE), theirs(HOSTILE, padding=True, truncation=True, return_tensors="np"))


def test_fixed_padding_matches_max_length_padding(pair):
    ours, theirs = pair
    got = ours(TEXTS, 64, pad_to_max_length=True)
    assert got["input_ids"].shape == (len(TEXTS), 64)
    assert_same(got, theirs(TEXTS, padding="max_length", truncation=True, max_length=64, return_tensors="np"))


def test_lengths_are_untruncated_lengths(pair):
    ours, theirs = pair
    lengths = ours.lengths(TEXTS)
    assert lengths == [len(ids) for ids in theirs(TEXTS)["input_ids"]]
    assert max(lengths) > 64  # the long labels really are longer than any limit used here


def test_unknown_characters_map_to_unk(pair):
    ours, theirs = pair
    ids = ours(["猫🐱"])["input_ids"][0].tolist()
    assert theirs.unk_token_id in ids


def test_model_max_length(pair):
    ours, theirs = pair
    limit = theirs.model_max_length
    assert ours.model_max_length == (limit if limit <= 100_000 else None)


def test_empty_batch():
    folder = write_hub_layout(Path(__import__("tempfile").mkdtemp()) / "hub")
    got = TextTokenizer.from_folder(folder)([])
    assert {k: v.shape for k, v in got.items()} == {k: (0, 0) for k in
                                                    ("input_ids", "token_type_ids", "attention_mask")}


def test_hub_layout_is_transformers_bert_tokenizer(tmp_path):
    from transformers import AutoTokenizer, BertTokenizer

    folder = write_hub_layout(tmp_path / "hub")
    assert not (folder / "tokenizer.json").exists()
    reference = BertTokenizer.from_pretrained(folder)
    assert type(AutoTokenizer.from_pretrained(folder)) is BertTokenizer
    ours = TextTokenizer.from_folder(folder)
    assert_same(ours(TEXTS, 52), reference(TEXTS, padding=True, truncation=True, max_length=52, return_tensors="np"))
    assert ours(["[CLS]"])["input_ids"][0].tolist() == [101, 101, 102]  # the real checkpoint's ids


def test_special_tokens_map_overrides_config(tmp_path):
    """As transformers reads it: special_tokens_map.json's tokens win over tokenizer_config.json's."""
    from transformers import AutoTokenizer

    folder = write_hub_layout(tmp_path / "hub")
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "[unused1]", "cls_token": "[unused2]"}))
    got = TextTokenizer.from_folder(folder)(HOSTILE, 52)
    assert_same(got, AutoTokenizer.from_pretrained(folder)(HOSTILE, padding=True, truncation=True, max_length=52,
                                                          return_tensors="np"))
    assert got["input_ids"][0, 0] == 2 and (got["input_ids"] == 1).any()


def test_added_tokens_decoder(tmp_path):
    """A config saved by transformers 4.3x lists its special tokens in ``added_tokens_decoder``."""
    from transformers import AutoTokenizer

    entry = dict(lstrip=False, rstrip=False, normalized=False, single_word=False, special=True)
    decoder = {str(i): dict(content=t, **entry) for i, t in enumerate(SPECIALS) if not t.startswith("[unused")}
    folder = write_hub_layout(tmp_path / "hub", added_tokens_decoder=decoder)
    assert_same(TextTokenizer.from_folder(folder)(HOSTILE, 52),
                AutoTokenizer.from_pretrained(folder)(HOSTILE, padding=True, truncation=True, max_length=52,
                                                      return_tensors="np"))
    write_hub_layout(folder, added_tokens_decoder={"5": dict(content="[MASK]", **entry)})
    with pytest.raises(NotReproducible, match="not in the vocabulary at id 5"):
        TextTokenizer.from_folder(folder)


def test_no_tokenizer_files(tmp_path):
    with pytest.raises(NotReproducible, match="no tokenizer.json or vocab.txt"):
        TextTokenizer.from_folder(tmp_path)
    with pytest.raises(NotReproducible):
        TextTokenizer.from_folder(tmp_path / "missing")


def test_sentencepiece_only_folder(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"\x00")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "SiglipTokenizer"}))
    with pytest.raises(NotReproducible, match="spiece.model"):
        TextTokenizer.from_folder(tmp_path)


def test_unknown_tokenizer_class(tmp_path):
    write_hub_layout(tmp_path, tokenizer_class="FancyTokenizer")
    with pytest.raises(NotReproducible, match="FancyTokenizer"):
        TextTokenizer.from_folder(tmp_path)


def test_missing_tokenizer_class_uses_model_type(tmp_path):
    write_hub_layout(tmp_path, tokenizer_class=None)
    with pytest.raises(NotReproducible, match="tokenizer_class"):
        TextTokenizer.from_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chinese_clip"}))
    assert TextTokenizer.from_folder(tmp_path)(["猫"])["input_ids"].tolist() == [[101, hub_vocab(TEXTS).index("猫"),
                                                                                  102]]


def test_imports_neither_torch_nor_transformers(tmp_path):
    folder = write_hub_layout(tmp_path / "hub")
    code = ("import sys; from wwts.core.models import TextTokenizer; "
            f"TextTokenizer.from_folder({str(folder)!r})(['一张猫的照片。'], 52); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
