"""The command line's options: typer ``Annotated`` types, choices, ``--help`` panels and examples.

Choices come from ``core/config.py`` (``DTYPES``, ``LANGS``, ``QUANTIZE``), where ``RunConfig``
validates them, so each list of names is written once. Default model names come from
``core.models`` (data, no torch import), so ``--help`` shows them and stays instant.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..core import BACKENDS, DEFAULT_PROMPT_TEMPLATE, DTYPES, LANGS, QUANTIZE
from ..core.models import default_model


def _choices(name: str, values) -> type[Enum]:
    """A ``str`` Enum whose members are ``values`` (typer shows and checks them as choices)."""
    return Enum(name, [(v, v) for v in values if v], type=str, module=__name__)


def _spelled(values) -> str:
    """``"a, b or c"``."""
    values = [v for v in values if v]
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


def run_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The ``RunConfig`` fields that every run command (classify, caption, search, embed) takes,
    from the command's parameters (its ``locals()``); ``--quantize``, ``--ray``, ``--backend`` and
    the store options where the command has them."""
    quantize = params.get("quantize")
    fields = dict(inputs=tuple(params["inputs"]), model=params["model"], device=params["device"],
                  dtype=params["dtype"].value, batch_size=params["batch_size"], threads=params["threads"],
                  decode_workers=params["workers"], recursive=params["recursive"],
                  follow_symlinks=params["follow_symlinks"], include_hidden=params["include_hidden"],
                  trust_remote_code=params["trust_remote_code"], allow_truncated=params["allow_truncated"],
                  max_pixels=params["max_pixels"], quantize=quantize.value if quantize else None,
                  ray=params.get("ray"))
    if "backend" in params:
        fields["backend"] = params["backend"].value
    if "no_store" in params:
        fields.update(store=not params["no_store"], store_dir=params["store"])
    if "image_size" in params:
        fields.update(image_size=params["image_size"], exact_pixels=params["exact_pixels"])
    return fields


#: ``--dtype`` choices: ``auto``, ``float32``, ``float16``, ``bfloat16`` (``config.DTYPES``).
DType = _choices("DType", DTYPES)
#: ``--lang`` choices: ``en``, ``zh`` (``config.LANGS``).
Lang = _choices("Lang", LANGS)
#: ``--quantize`` choices: ``int8`` (``config.QUANTIZE`` without ``None``).
Quantize = _choices("Quantize", QUANTIZE)
#: ``--backend`` choices: ``auto``, ``torch``, ``openvino``, ``onnxruntime`` (``config.BACKENDS``).
Backend = _choices("Backend", BACKENDS)

# Each option sits in one panel of --help: Inputs, Labels and prompt / Caption, Model and device,
# Output, Runs.
INPUTS, LABELS, CAPTION, MODEL, OUTPUT, RUNS = ("Inputs", "Labels and prompt", "Caption", "Model and device",
                                              "Output", "Runs")

# -- options of both run commands ----------------------------------------------------------------

InputsArg = Annotated[list[Path], typer.Argument(help="Image files and/or folders.", show_default=False,
                                                 metavar="PATH")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive/--no-recursive", help="Walk folders recursively.",
                                            rich_help_panel=INPUTS)]
SymlinksOpt = Annotated[bool, typer.Option("--follow-symlinks", rich_help_panel=INPUTS,
                                           help="Follow directory symlinks (loops are detected).")]
HiddenOpt = Annotated[bool, typer.Option("--include-hidden", rich_help_panel=INPUTS, help=(
    "Also take hidden files and folders (.*, macOS ._* files) in folder walks."))]
TruncOpt = Annotated[bool, typer.Option("--allow-truncated", rich_help_panel=INPUTS,
                                        help="Decode truncated files as far as they go (else an error record).")]
MaxPixelsOpt = Annotated[Optional[int], typer.Option("--max-pixels", min=1, rich_help_panel=INPUTS,
                                                     help="Refuse larger images from their header.",
                                                     show_default="Pillow's limit, 89478485")]
ClassifyModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Hub id or local model folder.",
                                                         show_default=default_model("classify"),
                                                         rich_help_panel=MODEL)]
CaptionModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Hub id or local model folder.", rich_help_panel=MODEL,
    show_default=f"{default_model('caption')}; --lang zh: {default_model('caption', 'zh')}")]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="auto, cpu, cuda, cuda:N, mps or xpu.",
                                        rich_help_panel=MODEL)]
ClassifyDeviceOpt = Annotated[str, typer.Option("--device", "-d", rich_help_panel=MODEL, help=(
    "auto, cpu, cuda, cuda:N, mps or xpu; OpenVINO: CPU, GPU.1, 0 (= GPU.0), NPU, AUTO, HETERO:GPU,CPU."))]
BackendOpt = Annotated[Backend, typer.Option("--backend", case_sensitive=False, metavar="BACKEND",
                                             rich_help_panel=MODEL, help=(
    f"{_spelled(BACKENDS)}; auto picks per machine (wwts doctor says which and why)."))]
DTypeOpt = Annotated[DType, typer.Option("--dtype", case_sensitive=False, metavar="DTYPE",
                                         help=f"{_spelled(DTYPES)}; auto picks per device.",
                                         rich_help_panel=MODEL)]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.",
                                                 show_default="per device", rich_help_panel=MODEL)]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch.",
                                                   show_default="physical cores", rich_help_panel=MODEL)]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="Image decode threads.",
                                                   show_default="from the cores", rich_help_panel=MODEL)]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", rich_help_panel=MODEL,
                                        help="Allow a model's own Python code (off by default).")]
QuantizeOpt = Annotated[Optional[Quantize], typer.Option("--quantize", case_sensitive=False, rich_help_panel=MODEL,
                                                         help=f"{_spelled(QUANTIZE)}: classify: the backend's int8 "
                                                              "(OpenVINO NNCF, ONNX Runtime dynamic; none: never, "
                                                              "not even --backend auto's checked int8); caption: "
                                                              "torch's dynamic int8 (CPU only), with --backend "
                                                              "openvino NNCF int8 weights of BLIP's decoder.")]
ImageSizeOpt = Annotated[Optional[int], typer.Option("--image-size", min=16, max=4096, metavar="PIXELS",
                                                     rich_help_panel=MODEL, show_default="the model's", help=(
    "Run the image tower at this input size (e.g. 160, 192) with interpolated position embeddings: "
    "faster, less accurate (README: Image size)."))]
ExactPixelsOpt = Annotated[bool, typer.Option("--exact-pixels", rich_help_panel=MODEL, help=(
    "pixel_values bit-equal to transformers' processor (slower decode); default: the fast resize "
    "(README: Exact pixels)."))]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", rich_help_panel=OUTPUT,
                                                help="Write results to .csv, .json or .jsonl (else a table).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.",
                                            rich_help_panel=OUTPUT)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no start line.",
                                        rich_help_panel=OUTPUT)]
ReportOpt = Annotated[Optional[Path], typer.Option("--report", rich_help_panel=OUTPUT, metavar="FILE.html",
                                                   help="Also write an HTML contact sheet at the end of the run.")]
WriteXmpOpt = Annotated[bool, typer.Option("--write-xmp", rich_help_panel=OUTPUT, help=(
    "Write labels / caption into an XMP sidecar beside each photo (merged; the photo is not touched)."))]
XmpName = _choices("XmpName", ("append", "replace"))
XmpNameOpt = Annotated[XmpName, typer.Option("--xmp-name", case_sensitive=False, rich_help_panel=OUTPUT, help=(
    "Sidecar name: append = IMG_1.jpg.xmp (darktable, digiKam), replace = IMG_1.xmp (Lightroom)."))]
ResumeOpt = Annotated[bool, typer.Option("--resume", rich_help_panel=RUNS,
                                         help="Continue an interrupted run: skip images already in --out.")]
RetryOpt = Annotated[bool, typer.Option("--retry-failed", rich_help_panel=RUNS,
                                        help="Process again the images whose record in --out has an error.")]
RayOpt = Annotated[Optional[str], typer.Option("--ray", metavar="ADDRESS", rich_help_panel=RUNS, help=(
    "Run on a Ray cluster: auto, HOST:PORT or ray://HOST:10001 (needs wwts[ray]; records in completion "
    "order)."))]

# -- classify ------------------------------------------------------------------------------------

LabelsOpt = Annotated[Optional[str], typer.Option("--labels", "-l", rich_help_panel=LABELS, help=(
    "Comma-separated labels, e.g. 人,车,动物 (，also works)."))]
LabelsFileOpt = Annotated[Optional[Path], typer.Option("--labels-file", rich_help_panel=LABELS,
                                                       help="One label per line; # comments.")]
PromptTemplateOpt = Annotated[Optional[str], typer.Option("--prompt", rich_help_panel=LABELS, help=(
    "Prompt template with {} for the label; \"\" = bare label."), show_default=DEFAULT_PROMPT_TEMPLATE)]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", min=1, rich_help_panel=LABELS, help=(
    "Labels per image (capped at the number of labels)."))]
VocabOpt = Annotated[Optional[str], typer.Option("--vocab", metavar="NAME|FILE", rich_help_panel=LABELS, help=(
    "Without --labels: a built-in vocabulary (everyday: 345 everyday categories; imagenet: the 997 "
    "ImageNet-1k names in Chinese) or a labels file."), show_default="everyday")]
PromptsFileOpt = Annotated[Optional[Path], typer.Option("--prompts", rich_help_panel=LABELS, help=(
    "Prompt ensemble: a file of templates, one per line, each with {}; features averaged per label."),
    show_default="4 Chinese templates for Chinese-CLIP")]
MultiLabelOpt = Annotated[bool, typer.Option("--multi-label", rich_help_panel=LABELS, help=(
    "Every label whose own score passes --threshold (the labels column), best first."))]
ThresholdOpt = Annotated[float, typer.Option("--threshold", min=0.0, max=1.0, rich_help_panel=LABELS,
                                             help="--multi-label: the per-label score a label must reach.")]
MinScoreOpt = Annotated[Optional[float], typer.Option("--min-score", min=0.0, max=1.0, rich_help_panel=LABELS,
                                                      help="Label an image --other-label when no label reaches this.")]
OtherLabelOpt = Annotated[str, typer.Option("--other-label", rich_help_panel=LABELS,
                                            help="The label of an image no label fits (--min-score).")]
StrictLabelsOpt = Annotated[bool, typer.Option("--strict-labels", rich_help_panel=LABELS, help=(
    "Stop (exit 2) on duplicate, contained or indistinguishable labels instead of warning."))]
LabelMapOpt = Annotated[Optional[Path], typer.Option("--label-map", metavar="FILE.json", rich_help_panel=LABELS,
                                                     help="JSON object: model label (or class id) → name to show.")]

# -- caption -------------------------------------------------------------------------------------

LangOpt = Annotated[Lang, typer.Option("--lang", case_sensitive=False, rich_help_panel=CAPTION, help=(
    "Caption language: en (BLIP) or zh (a Qwen-VL chat model)."))]
CaptionPromptOpt = Annotated[Optional[str], typer.Option("--prompt", rich_help_panel=CAPTION, help=(
    "Prompt (BLIP: caption prefix; chat models: the instruction)."))]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, rich_help_panel=CAPTION,
                                              help="Longest caption, in tokens.")]
MinNewTokensOpt = Annotated[Optional[int], typer.Option("--min-new-tokens", min=0, rich_help_panel=CAPTION,
                                                        help="Shortest caption, in tokens.")]
NumBeamsOpt = Annotated[int, typer.Option("--num-beams", min=1, rich_help_panel=CAPTION,
                                          help="Beam search width (1 = greedy).")]
RepetitionPenaltyOpt = Annotated[Optional[float], typer.Option("--repetition-penalty", rich_help_panel=CAPTION,
                                                               help="Penalty > 1 discourages repeats.")]

# -- doctor --------------------------------------------------------------------------------------

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the facts as one JSON object.")]
RecalibrateOpt = Annotated[bool, typer.Option(
    "--recalibrate", help="Measure again whether bf16 is faster than float32 on this CPU (cached otherwise).")]

# -- help texts ----------------------------------------------------------------------------------

APP_HELP = ("万物识别 wwts: zero-shot classification (Chinese labels) and captioning of photo folders, "
            "fast on CPU, Apple MPS or NVIDIA CUDA.")
APP_EPILOG = ("Examples:\n\nwwts classify ./photos --labels 人,车,动物\n\nwwts caption ./photos --out results.csv"
              "\n\nwwts doctor\n\nwwts classify -h")
CLASSIFY_HELP = ("Zero-shot classification of images against Chinese (or any) labels with Chinese-CLIP.\n\n"
                 f"Default model: {default_model('classify')} (--model for another).")
CAPTION_HELP = ("Caption images (English with BLIP by default; --lang zh for Chinese).\n\n"
                f"Default model: {default_model('caption')}; with --lang zh: {default_model('caption', 'zh')}.")

CLASSIFY_EXAMPLES = """Examples:

wwts classify ./photos --labels 人,车,动物

wwts classify ./photos --labels-file labels.txt --top-k 3 --out results.csv

wwts classify a.jpg b.png --labels "cat,dog" --prompt "a photo of a {}" -m openai/clip-vit-base-patch32

wwts classify ./photos --labels 人,车 --out r.jsonl --resume

wwts classify ./photos --vocab imagenet --multi-label --threshold 0.6 --min-score 0.5 --out r.csv"""

CAPTION_EXAMPLES = """Examples:

wwts caption ./photos --out results.csv

wwts caption ./photos --lang zh --out results.jsonl

wwts caption ./photos -m Salesforce/blip-image-captioning-large --num-beams 3 --max-new-tokens 40"""

DOCTOR_EXAMPLES = """Examples:

wwts doctor

wwts doctor --json > facts.json"""
