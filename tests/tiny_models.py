"""Tiny random-weight models built from real transformers configs, for offline tests.

Sizes follow transformers' own Chinese-CLIP tests (tests/models/chinese_clip/
test_modeling_chinese_clip.py: hidden size 32, 2 layers). Two traps noted in DESIGN.md are
handled: the image processor's crop size equals the vision config's ``image_size``, and the
vocabulary holds every character the tests use so token ids stay inside it.
"""

from __future__ import annotations

import inspect
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
#: Characters of the default prompt and of every label the tests and the demo use.
CHARS = "一张的照片。人车动物猫狗花咖啡火箭建筑鸟天空山水树草食品视网膜星宇航员机男女孩风景城市夜海"
IMAGE_SIZE = 30
#: Transformer size of every tiny tower (transformers' own CLIP tests use these numbers).
TOWER = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
#: Image processor sizes matching the vision config's ``image_size``.
SIZES = dict(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _save(model, processor, path: Path) -> Path:
    """``save_pretrained`` both into ``path`` (the folder a user would pass to ``--model``)."""
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _bert_tokenizer(vocab: list[str]):
    from transformers import BertTokenizer

    params = inspect.signature(BertTokenizer.__init__).parameters
    if "vocab" in params:  # transformers 5: tokenizers-backed, takes the vocabulary itself
        return BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)})
    import tempfile

    path = Path(tempfile.mkdtemp()) / "vocab.txt"  # transformers 4: a vocab.txt file
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer(vocab_file=str(path))


def build_tiny_chinese_clip(path: Path, seed: int = 0) -> Path:
    """Save a tiny random ``ChineseCLIPModel`` + ``ChineseCLIPProcessor`` to ``path``.

    Vision: 30 px input, patch 6, hidden 32, 2 layers. Text: BERT, hidden 32, 2 layers, a
    vocabulary of the special tokens plus ``CHARS``. Returns ``path``.
    """
    import torch
    from transformers import ChineseCLIPConfig, ChineseCLIPModel, ChineseCLIPProcessor

    try:
        from transformers import ChineseCLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4.x
        from transformers import ChineseCLIPImageProcessor as ImageProcessor

    vocab = SPECIAL + list(dict.fromkeys(CHARS))
    config = ChineseCLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=64, **TOWER),
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=6, **TOWER),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = ChineseCLIPModel(config).eval()
    processor = ChineseCLIPProcessor(
        image_processor=ImageProcessor(**SIZES),
        tokenizer=_bert_tokenizer(vocab),
    )
    return _save(model, processor, path)


def build_tiny_clip(path: Path, seed: int = 0) -> Path:
    """Save a tiny random OpenAI-style ``CLIPModel`` + ``CLIPProcessor`` (English labels) to ``path``.

    The byte-pair tokenizer has one token per letter (with and without the end-of-word mark) and
    no merges, so any lower-case English label tokenizes inside the vocabulary.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as ImageProcessor

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, **TOWER),
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=6, **TOWER),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=ImageProcessor(**SIZES),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[]),
    )
    return _save(model, processor, path)


def _tiny_sentencepiece(folder: Path, texts: list[str], vocab_size: int = 48) -> Path:
    """Train a tiny unigram SentencePiece model on ``texts`` (offline, milliseconds) and write it to
    ``folder/spiece.model``, the file SigLIP's tokenizer reads. Ids as SigLIP's: pad 0, eos 1, unk 2."""
    import io

    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buffer, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2, num_threads=1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spiece.model"
    path.write_bytes(buffer.getvalue())
    return path


def build_tiny_siglip(path: Path, seed: int = 0) -> Path:
    """Save a tiny random ``SiglipModel`` + ``SiglipProcessor`` (English labels) to ``path``.

    The processor is the real one SigLIP checkpoints ship (google/siglip-base-patch16-224):
    a square resize without crop and a SentencePiece tokenizer, here trained on the lower-case
    alphabet and a few words so that test labels stay inside its vocabulary.
    """
    import tempfile

    import torch
    from transformers import SiglipConfig, SiglipModel, SiglipProcessor, SiglipTokenizer

    try:
        from transformers import SiglipImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4.x
        from transformers import SiglipImageProcessor as ImageProcessor

    texts = ["a photo of a cat.", "a photo of a dog.", "rocket coffee flower person car animal",
             " ".join("abcdefghijklmnopqrstuvwxyz")] * 20
    spiece = _tiny_sentencepiece(Path(tempfile.mkdtemp()), texts)
    tokenizer = SiglipTokenizer(vocab_file=str(spiece))
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=64, pad_token_id=0,
                         bos_token_id=1, eos_token_id=1, **TOWER),
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=6, **TOWER),
    )
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    processor = SiglipProcessor(
        image_processor=ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
    )
    return _save(model, processor, path)
