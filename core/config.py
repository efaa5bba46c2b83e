"""Run configuration: one frozen, validated ``RunConfig`` built by the CLI and read by the engine.

Validation happens once, in ``__post_init__``, and raises ``UsageError`` with a message that names
the valid values. Nothing here touches torch; the only file-system access is the check that each
input path exists (label files are read by ``read_labels_file``, which the CLI calls before
building the config).
"""

from __future__ import annotations

import codecs
import logging
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

log = logging.getLogger(__name__)

TASKS = ("classify", "caption")
DTYPES = ("auto", "float32", "float16", "bfloat16")
#: Caption languages (``--lang``): each picks a default model and prompt.
LANGS = ("en", "zh")
QUANTIZE = (None, "int8", "none")  # none: float, never int8 (--backend auto may choose int8)
#: ``--backend`` choices (``core.backends.select`` documents the ``auto`` rule).
BACKENDS = ("auto", "torch", "openvino", "onnxruntime")
#: Default zero-shot prompt template; Chinese-CLIP's own zero-shot templates are of this form
#: (OFA-Sys/Chinese-CLIP, cn_clip/eval/data.py, "一张{}的照片。").
DEFAULT_PROMPT_TEMPLATE = "一张{}的照片。"
#: Classify's label for an image no label fits (``--min-score``; ``--other-label`` changes it).
DEFAULT_OTHER_LABEL = "其他"
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|xpu(:\d+)?|cuda(:\d+)?)$")
#: Device names of the other backends (OpenVINO's ``GPU.1``, ``HETERO:GPU,CPU``, a bare ``0``;
#: ONNX Runtime's ``coreml``): checked against the devices the backend has when the run starts.
_BACKEND_DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:,_()-]*$")
_LABEL_SPLIT_RE = re.compile(r"[,，]")


def parse_labels(text: str) -> tuple[str, ...]:
    """Split ``"人,车，动物"`` on ASCII or full-width commas; strips blanks around each label.

    Raises:
        UsageError: an empty label (``"人,,车"``, ``"人,"``) or a duplicate label. The message
            quotes ``text`` as the user typed it and, for a trailing comma (``--labels 人, 车``
            unquoted, where the shell made ``车`` an input path), says how to quote the list.
    """
    parts = [part.strip() for part in _LABEL_SPLIT_RE.split(text)]
    if "" in parts:
        raise UsageError(f"--labels {shlex.quote(text)}: {_empty_label_where(parts)}")
    return validate_labels(parts, source="--labels")


def _empty_label_where(parts: list[str]) -> str:
    """Where the empty label is in ``parts`` (the text split on commas), with a quoting hint."""
    if not any(parts):
        return "no labels, give them separated by commas: --labels 人,车,动物"
    if parts[-1] == "":
        return ("empty label after the last comma; if you typed spaces after commas, quote the list: "
                "--labels '人, 车, 动物'")
    if parts[0] == "":
        return "empty label before the first comma"
    return "empty label between two commas"


def read_labels_file(path: Path) -> tuple[str, ...]:
    """Read one label per line; ``#`` starts a comment; blank lines skipped.

    The file is read as UTF-8 (a BOM is allowed). A file that is not valid UTF-8 but decodes
    cleanly as GB18030 (a superset of GBK, what Notepad on Chinese Windows writes as "ANSI") is
    read as that, with one warning saying so; a UTF-16 file with a BOM is read as UTF-16.

    Raises:
        UsageError: unreadable file, a file in neither encoding, no labels, or a duplicate label.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read labels file {path}: {exc}") from None
    text = _decode_labels(data, path)
    labels = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            labels.append(line)
    return validate_labels(labels, source=str(path))


def _decode_labels(data: bytes, path: Path) -> str:
    """Text of a labels file: UTF-8 (BOM allowed), UTF-16 with a BOM, else GB18030 with a warning.

    Raises:
        UsageError: the bytes are valid in none of these encodings.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        utf8_error = exc
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        raise UsageError(f"labels file {path} is not UTF-8 text (byte 0x{data[utf8_error.start]:02x} at offset "
                         f"{utf8_error.start}) nor GBK/GB18030: save it as UTF-8") from None
    log.warning("labels file %s is not UTF-8; read it as GB18030 (GBK, Chinese Windows' ANSI): "
                "save it as UTF-8 to be sure the labels are read as written", path)
    return text


def validate_labels(labels, *, source: str) -> tuple[str, ...]:
    """Strip labels and reject empty or duplicate ones (``source`` names where they came from).

    Raises:
        UsageError: no labels, an empty label, or a duplicate label.
    """
    labels = list(labels)
    out: list[str] = []
    for raw in labels:
        label = raw.strip()
        if not label:
            raise UsageError(f"empty label in {source}: {labels!r}")
        if label in out:
            raise UsageError(f"duplicate label {label!r} in {source}")
        out.append(label)
    if not out:
        raise UsageError(f"no labels in {source}")
    return tuple(out)


def validate_prompt_template(prompt: str | None) -> None:
    """Check a classify ``--prompt``: ``None`` (default), ``""`` (bare label), or text with exactly
    one ``{}`` where the label goes and no other ``{`` or ``}``.

    The label is put in with ``fill_prompt`` (plain replacement, never ``str.format``), so braces
    in a label stay literal.

    Raises:
        UsageError: no ``{}``, more than one, or another brace (``{x}``, ``{0}``, ``{}}``...).
    """
    if not prompt:
        return
    count = prompt.count("{}")
    rest = prompt.replace("{}", "")
    if count == 1 and "{" not in rest and "}" not in rest:
        return
    if count == 0:
        why = "it has no {}"
    elif count > 1:
        why = f"it has {count} {{}}"
    else:
        why = "it has a brace besides its {}"
    raise UsageError(f"--prompt {prompt!r}: {why}; the template needs exactly one {{}} where the label goes "
                     "and no other braces, e.g. --prompt '一张{}的照片。' (or --prompt '' for the bare label)")


def fill_prompt(template: str, label: str) -> str:
    """``template`` with its ``{}`` replaced by ``label`` (``"{}"`` alone gives the bare label).

    A plain replacement: ``{}`` or ``{0}`` inside ``label`` stay as typed.
    """
    return template.replace("{}", label, 1)


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs. Built once by the CLI, validated here, never mutated.

    Attributes:
        task: ``"classify"`` or ``"caption"``.
        inputs: files and/or folders to process.
        model: hub id or local folder; ``None`` picks the task's default (see ``core.models``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``xpu``; with another backend
            its own names (OpenVINO: ``CPU``, ``GPU.1``, ``0``, ``AUTO``, ``HETERO:GPU,CPU``).
        backend: ``auto``, ``torch``, ``openvino`` or ``onnxruntime`` (what runs the towers).
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
        batch_size: images per forward pass; ``None`` lets the device choose.
        threads: torch intra-op threads; ``None`` means physical cores (or ``OMP_NUM_THREADS``).
        decode_workers: image decode threads; ``None`` chooses from the core count.
        recursive: walk folders recursively.
        follow_symlinks: follow directory symlinks (loops are detected).
        include_hidden: walk hidden folders and take hidden files (``.*``, macOS ``._*``).
        labels: classify only, the candidate labels.
        prompt: classify: template with ``{}`` (``""`` = bare label, ``None`` = default);
            caption: the text prompt (``None`` = the model family's default).
        top_k: classify only, labels per record (capped at ``len(labels)``).
        lang: caption only, ``"en"`` or ``"zh"``; picks the default model and prompt.
        max_new_tokens, min_new_tokens, num_beams, repetition_penalty: caption generation.
        quantize: ``None``, ``"int8"`` (dynamic int8 Linear layers, CPU only) or ``"none"`` (float:
            ``--backend auto`` never chooses int8).
        trust_remote_code: passed to ``from_pretrained``; off by default.
        allow_truncated: decode truncated files as far as they go instead of an error record.
        max_pixels: refuse larger images from their header (``None``: Pillow's limit, ~89 MP).
        vocab: classify without ``labels``: a built-in vocabulary name or a labels file
            (``None``: the default vocabulary, see ``core.labels``).
        prompts: classify: templates of a prompt ensemble (``--prompts FILE``); ``()`` = ``prompt``.
        multi_label, threshold: classify: every label whose per-label score is >= ``threshold``.
        min_score, other_label: classify: ``other_label`` when no label reaches ``min_score``.
        strict_labels: classify: label hygiene problems stop the run (exit 2).
        label_map: classify: label → name to show (``--label-map FILE.json``).
        store: use the embedding store (``--no-store``: off): image embeddings and label features
            are read from it when present and put in it when computed (see ``core.store``).
        store_dir: the store folder (``--store DIR``); ``None``: ``user_cache_dir("wwts")/embeddings``.
        head: what a classify model's image embeddings are used for: ``"search"`` (rank images by
            similarity to ``labels[0]``, ``wwts search``) or ``"embed"`` (export the embeddings,
            ``wwts embed``); ``None``: the task's own head (zero-shot / closed-set classify, caption).
        ray: run on the Ray cluster at this address (``auto``, ``HOST:PORT``, ``ray://HOST:10001``,
            ``local``); ``None``: on this machine (see ``core.cluster``).
        exact_pixels: dual encoders: ``pixel_values`` bit-equal to transformers' processor (2x
            draft, full resize, then crop) instead of the fast recipe (``ImagePreprocessor(fast=True)``).
        image_size: dual encoders: run the image tower at this square input side in pixels with
            interpolated position embeddings (``--image-size``); ``None``: the model's own.
    """

    task: str
    inputs: tuple[Path, ...]
    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    threads: int | None = None
    decode_workers: int | None = None
    recursive: bool = True
    follow_symlinks: bool = False
    include_hidden: bool = False
    labels: tuple[str, ...] = ()
    prompt: str | None = None
    top_k: int = 3
    lang: str = "en"
    max_new_tokens: int = 30
    min_new_tokens: int | None = None
    num_beams: int = 1
    repetition_penalty: float | None = None
    quantize: str | None = None
    backend: str = "auto"
    trust_remote_code: bool = False
    allow_truncated: bool = False
    max_pixels: int | None = None
    vocab: str | None = None
    prompts: tuple[str, ...] = ()
    multi_label: bool = False
    threshold: float = 0.5
    min_score: float | None = None
    other_label: str = DEFAULT_OTHER_LABEL
    strict_labels: bool = False
    label_map: dict | None = field(default=None, compare=False, hash=False)
    ray: str | None = None
    store: bool = True
    store_dir: Path | None = None
    head: str | None = None
    exact_pixels: bool = False
    image_size: int | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UsageError(f"unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        if not self.inputs:
            raise UsageError("no input paths given")
        object.__setattr__(self, "inputs", tuple(Path(p) for p in self.inputs))
        for p in self.inputs:
            if not p.exists() and not p.is_symlink():
                raise UsageError(f"input path does not exist: {p}")
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if not (_DEVICE_RE.match(self.device) or (self.backend != "torch" and _BACKEND_DEVICE_RE.match(self.device))):
            raise UsageError(f"unknown device {self.device!r}; valid: auto, cpu, cuda, cuda:N, mps, xpu (or, with "
                             "--backend openvino / onnxruntime, that backend's device names)")
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        if self.image_size is not None and not 16 <= self.image_size <= 4096:
            raise UsageError(f"--image-size must be between 16 and 4096 pixels, got {self.image_size}")
        for name in ("batch_size", "threads", "decode_workers", "max_pixels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.quantize not in QUANTIZE:
            raise UsageError(f"unknown quantization {self.quantize!r}; valid: int8, none")
        if self.ray is not None and not self.ray.strip():
            raise UsageError("--ray needs an address: auto, HOST:PORT or ray://HOST:10001")
        if self.head not in (None, "search", "embed"):
            raise UsageError(f"unknown head {self.head!r}; valid: search, embed")
        if self.head == "search" and len(self.labels) != 1:
            raise UsageError("search takes one text to search for")
        if self.task == "classify":
            if self.labels:
                validate_labels(self.labels, source="labels")
            self._check_label_options()
            if self.top_k < 1:
                raise UsageError(f"--top-k must be at least 1, got {self.top_k}")
            validate_prompt_template(self.prompt)
        else:
            if self.lang not in LANGS:
                raise UsageError(f"unknown --lang {self.lang!r}; valid: {', '.join(LANGS)}")
            if self.max_new_tokens < 1:
                raise UsageError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
            if self.num_beams < 1:
                raise UsageError(f"--num-beams must be at least 1, got {self.num_beams}")
            if self.min_new_tokens is not None and not 0 <= self.min_new_tokens <= self.max_new_tokens:
                raise UsageError("--min-new-tokens must be between 0 and --max-new-tokens")

    def _check_label_options(self) -> None:
        """Classify's vocabulary, prompt-ensemble, multi-label and abstain options.

        Raises:
            UsageError: labels and a vocabulary, ``--prompt`` and ``--prompts``, a bad template,
                a threshold or minimum score outside [0, 1], or an empty ``--other-label``.
        """
        if self.labels and self.vocab:
            raise UsageError("give --labels / --labels-file or --vocab, not both")
        if self.prompt is not None and self.prompts:
            raise UsageError("give --prompt or --prompts, not both")
        for template in self.prompts:
            validate_prompt_template(template)
        for name in ("threshold", "min_score"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise UsageError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
        if not self.other_label.strip():
            raise UsageError("--other-label must not be empty")

    @property
    def templates(self) -> tuple[str, ...] | None:
        """Classify: the prompt templates the user chose (``--prompts``, else ``--prompt``), or
        ``None`` when the model's default applies (known once the model is loaded)."""
        if self.prompts:
            return self.prompts
        return None if self.prompt is None else (self.prompt_template,)

    @property
    def prompt_template(self) -> str:
        """Classify: the template actually used (``"{}"`` when the user passed ``--prompt ""``)."""
        if self.prompt is None:
            return DEFAULT_PROMPT_TEMPLATE
        return self.prompt or "{}"

    @property
    def effective_top_k(self) -> int:
        """``top_k`` capped at the number of labels."""
        return min(self.top_k, len(self.labels)) if self.labels else self.top_k

    def resume_settings(self, model: str) -> dict:
        """The settings that must match an existing ``--out`` for ``--resume`` to append to it,
        as far as they are known before the model loads (the dtype and the caption prompt are
        known only after, and are compared then against ``Run.info()``).

        Args:
            model: the model name the run uses: ``models.model_for(task, lang, model)`` (passed in
                because this module is a leaf that imports nothing of wwts but ``errors``).

        Returns:
            ``task``, ``model`` and ``quantize``; classify adds ``vocab``, ``multi_label``,
            ``threshold``, ``min_score``, ``other_label``, and when known before the model loads
            ``labels`` (a list), ``prompt`` (the template, or the list of templates) and ``top_k``
            (capped); caption adds ``max_new_tokens`` and
            ``num_beams``. The keys are those of ``core.output.RESUME_KEYS`` that are known here.
        """
        settings = {"task": self.task, "model": model, "quantize": self.quantize}
        if self.task == "classify":
            settings.update(vocab=self.vocab, multi_label=self.multi_label, threshold=self.threshold,
                            min_score=self.min_score, other_label=self.other_label)
            if self.labels:  # a vocabulary's labels, the default prompt and K are known after the model loads
                settings.update(labels=list(self.labels), top_k=self.effective_top_k)
            if self.templates is not None:
                settings["prompt"] = self.templates[0] if len(self.templates) == 1 else list(self.templates)
        else:
            settings.update(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)
        return settings
