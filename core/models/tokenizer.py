"""Label-prompt tokenization with the ``tokenizers`` library alone (no torch, no transformers).

A classify run on OpenVINO / ONNX Runtime needs only the token ids of its label prompts; importing
transformers for them costs seconds of start-up. ``TextTokenizer`` reads a checkpoint folder's
tokenizer files and gives the ids transformers' tokenizer (``AutoTokenizer`` / the processor's
``tokenizer``) gives for ``tokenizer(texts, padding=True, truncation=True, max_length=...,
return_tensors="np")``. Folders it cannot reproduce exactly raise ``NotReproducible``; callers
then fall back to transformers.

Recipes followed (transformers 5): ``BertTokenizer.__init__`` (models/bert/tokenization_bert.py)
rebuilds the backend from the vocabulary and ``tokenizer_config.json`` (``BertNormalizer``,
``BertPreTokenizer``, a ``[CLS] $A [SEP]`` template) whether the vocabulary comes from
``tokenizer.json`` or ``vocab.txt``; ``PreTrainedTokenizerBase.from_pretrained``
(tokenization_utils_base.py) lets ``special_tokens_map.json`` override the config's named special
tokens when the config has no ``added_tokens_decoder``; ``TokenizersBackend.set_truncation_and_padding``
(tokenization_utils_tokenizers.py) sets the backend's truncation and padding per call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from ..errors import NotReproducible

#: A ``model_max_length`` above this is transformers' "no limit" placeholder (``VERY_LARGE_INTEGER``, 1e30).
NO_LIMIT = 100_000
_BERT_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
_CLIP_INPUTS = ("input_ids", "attention_mask")
#: tokenizer_class -> (recipe, transformers' ``model_input_names``, the class's default pad token).
_CLASSES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "BertTokenizer": ("bert", _BERT_INPUTS, "[PAD]"),
    "BertTokenizerFast": ("bert", _BERT_INPUTS, "[PAD]"),
    "CLIPTokenizer": ("json", _CLIP_INPUTS, "<|endoftext|>"),
    "CLIPTokenizerFast": ("json", _CLIP_INPUTS, "<|endoftext|>"),
}
#: config.json ``model_type`` -> tokenizer class, for a tokenizer_config.json without ``tokenizer_class``.
_MODEL_TYPES = {"bert": "BertTokenizer", "chinese_clip": "BertTokenizer", "clip": "CLIPTokenizer"}
#: Output key -> ``tokenizers.Encoding`` attribute.
_FIELDS = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}
#: BertTokenizer's named special tokens, in transformers' ``SPECIAL_TOKENS_ATTRIBUTES`` order.
_BERT_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NotReproducible(f"{path}: unreadable JSON ({exc})") from exc
    return data if isinstance(data, dict) else {}


def _content(token: Any) -> str | None:
    """A special token as saved: a string, or an ``AddedToken`` dict (``{"content": ...}``)."""
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None


def _tokenizer_class(folder: Path, config: dict[str, Any]) -> str:
    name = config.get("tokenizer_class") or _MODEL_TYPES.get(_read_json(folder / "config.json").get("model_type"))
    if not name:
        raise NotReproducible(f"{folder}: no tokenizer_class in tokenizer_config.json and no known model_type")
    if name not in _CLASSES:
        raise NotReproducible(f"{folder}: tokenizer class {name!r} is not one of {sorted(_CLASSES)}")
    return name


def _bert_backend(folder: Path, config: dict[str, Any]) -> tuple[Tokenizer, str]:
    """BertTokenizer's backend: WordPiece vocabulary (tokenizer.json or vocab.txt) + the config's rules."""
    specials = dict(_BERT_SPECIALS)
    for key in specials:
        specials[key] = _content(config.get(key)) or specials[key]
    if "added_tokens_decoder" not in config:  # transformers reads the legacy map only then
        for key, value in _read_json(folder / "special_tokens_map.json").items():
            if key in specials and _content(value):
                specials[key] = _content(value)
    if (folder / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        if not isinstance(tokenizer.model, WordPiece):
            raise NotReproducible(f"{folder}: tokenizer.json of a BertTokenizer is not WordPiece")
    elif (folder / "vocab.txt").is_file():
        tokenizer = Tokenizer(WordPiece.from_file(str(folder / "vocab.txt"), unk_token=specials["unk_token"]))
    else:
        raise NotReproducible(f"{folder}: a BertTokenizer needs tokenizer.json or vocab.txt")
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=config.get("strip_accents"), lowercase=bool(config.get("do_lower_case", True)))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    _add_tokens(folder, tokenizer, config.get("added_tokens_decoder") or {}, list(specials.values()))
    cls, sep = specials["cls_token"], specials["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))])
    return tokenizer, specials["pad_token"]


def _add_tokens(folder: Path, tokenizer: Tokenizer, decoder: dict[str, Any], specials: list[str]) -> None:
    """The config's ``added_tokens_decoder`` (each at its saved id), then the named special tokens."""
    for index, token in sorted(decoder.items(), key=lambda item: int(item[0])):
        if not isinstance(token, dict) or tokenizer.token_to_id(str(token.get("content"))) != int(index):
            raise NotReproducible(f"{folder}: added token {token!r} is not in the vocabulary at id {index}")
        flags = {k: token[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in token}
        tokenizer.add_tokens([AddedToken(token["content"], **flags)])
    added = {str(token.get("content")) for token in decoder.values() if isinstance(token, dict)}
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials if t not in added])


class TextTokenizer:
    """Label prompts -> token arrays, as transformers' tokenizer of the same checkpoint gives them.

    Attributes:
        model_max_length: the config's ``model_max_length`` in tokens, ``None`` when absent or
            transformers' "no limit" placeholder (above ``NO_LIMIT``).
        input_names: the keys ``__call__`` returns (transformers' ``model_input_names``).
    """

    def __init__(self, tokenizer: Tokenizer, pad_token: str, input_names: tuple[str, ...],
                 model_max_length: int | None = None, padding_side: str = "right",
                 truncation_side: str = "right") -> None:
        """Wrap a ``tokenizers.Tokenizer`` (with its post-processor set).

        Raises:
            NotReproducible: ``pad_token`` is not in its vocabulary.
        """
        self._tokenizer = tokenizer
        self._pad_token = pad_token
        self._pad_id = tokenizer.token_to_id(pad_token)
        if self._pad_id is None:
            raise NotReproducible(f"pad token {pad_token!r} is not in the vocabulary")
        self.input_names = tuple(input_names)
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side

    @classmethod
    def from_folder(cls, folder: str | Path) -> TextTokenizer:
        """Load the tokenizer of a checkpoint folder (a ``save_pretrained`` folder or a hub snapshot).

        ``tokenizer.json`` is read with ``tokenizers.Tokenizer.from_file``; a BERT folder without it
        (the hub layout of OFA-Sys/chinese-clip-vit-base-patch16: vocab.txt, tokenizer_config.json,
        special_tokens_map.json) is built from ``vocab.txt`` as a ``tokenizers`` WordPiece model.
        ``tokenizer_config.json`` gives do_lower_case, tokenize_chinese_chars, strip_accents, the
        special tokens, model_max_length and the padding / truncation sides.

        Raises:
            NotReproducible: no tokenizer files, an unknown ``tokenizer_class`` (e.g. a
                SentencePiece-only SigLIP folder), legacy ``added_tokens.json``, or unreadable files.
        """
        folder = Path(folder)
        config = _read_json(folder / "tokenizer_config.json")
        if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
            found = sorted(p.name for p in folder.glob("*.model")) if folder.is_dir() else []
            raise NotReproducible(f"{folder}: no tokenizer.json or vocab.txt"
                                       + (f" (only {', '.join(found)}: SentencePiece)" if found else ""))
        if (folder / "added_tokens.json").is_file():
            raise NotReproducible(f"{folder}: legacy added_tokens.json is not supported")
        recipe, input_names, pad_default = _CLASSES[_tokenizer_class(folder, config)]
        try:
            if recipe == "bert":
                tokenizer, pad_token = _bert_backend(folder, config)
            else:
                tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
                pad_token = _content(config.get("pad_token")) or pad_default
        except NotReproducible:
            raise
        except Exception as exc:  # tokenizers raises plain Exception on malformed files
            raise NotReproducible(f"{folder}: cannot build the tokenizer ({exc})") from exc
        limit = config.get("model_max_length")
        limit = int(limit) if isinstance(limit, (int, float)) and 0 < limit <= NO_LIMIT else None
        names = tuple(config.get("model_input_names") or input_names)
        if not set(names) <= set(_FIELDS):
            raise NotReproducible(f"{folder}: model_input_names {list(names)} beyond {list(_FIELDS)}")
        return cls(tokenizer, pad_token, names, limit, config.get("padding_side", "right"),
                   config.get("truncation_side", "right"))

    def __call__(self, texts: list[str], max_length: int | None = None,
                 pad_to_max_length: bool = False) -> dict[str, np.ndarray]:
        """Token arrays of ``texts``, special tokens added, truncated to ``max_length`` tokens.

        Like ``tokenizer(texts, padding=True, truncation=True, max_length=max_length,
        return_tensors="np")``: rows are padded with the pad id on the tokenizer's padding side to
        the longest row, or to ``max_length`` when ``pad_to_max_length`` (``padding="max_length"``,
        SigLIP's 64). ``max_length=None`` means ``model_max_length`` (no truncation when that is None).

        Returns:
            ``input_names`` keys (``input_ids``, ``attention_mask`` and, for BERT, ``token_type_ids``),
            each int64 ``(N, T)``; ``(0, 0)`` for no texts.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        limit = max_length or self.model_max_length
        if not texts:
            return {name: np.zeros((0, 0), dtype=np.int64) for name in self.input_names}
        if limit:
            self._tokenizer.enable_truncation(limit, direction=self.truncation_side)
        else:
            self._tokenizer.no_truncation()
        self._tokenizer.enable_padding(direction=self.padding_side, pad_id=self._pad_id, pad_type_id=0,
                                       pad_token=self._pad_token, length=limit if pad_to_max_length else None)
        try:
            encodings = self._tokenizer.encode_batch(texts)
        finally:
            self._tokenizer.no_truncation()
            self._tokenizer.no_padding()
        return {name: np.asarray([getattr(e, _FIELDS[name]) for e in encodings], dtype=np.int64)
                for name in self.input_names}

    def lengths(self, texts: list[str]) -> list[int]:
        """Token count of each text without truncation, special tokens included (for the
        "label longer than N tokens" warning)."""
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]
