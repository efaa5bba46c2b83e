"""The ``wwts`` command line: ``classify``, ``caption`` and ``doctor``.

Parses options, builds a ``RunConfig``, shows progress and writes results; all logic lives in
``wwts.core``. torch is imported inside the commands, never at module import, so ``wwts --help``
is instant. Every ``WwtsError`` becomes one red line on stderr and its exit code, in one place
(``_fail``).

Everything shown is data, never rich markup: consoles are ``cli.display.DataConsole`` (paths,
labels and messages literal, control characters escaped), colour comes from ``Text`` objects.

Exit codes (the README lists the same):

- 0: success (also "nothing to do" on ``--resume``);
- 1: an unexpected error (a bug: one line, ``WWTS_DEBUG=1`` shows the traceback), or results
  that could not be written mid-run (disk full: the message names the file holding the records);
- 2: usage, model, device or output error (bad option, no images, model not found, an ``--out``
  that cannot be created, is locked by another run, or is corrupt on ``--resume``...), found
  before any image is processed;
- 3: the run finished but some images failed (their records hold the error);
- 4: the device failed mid-run (results so far are saved);
- 130 / 143: interrupted by Ctrl-C / SIGTERM (results so far are saved).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import warnings
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console

from wwts.cli.display import DataConsole, records_table, styled
from wwts.core.errors import WwtsError
from wwts.core.models import default_model

app = typer.Typer(
    name="wwts",
    help="万物识别 wwts: zero-shot classification (Chinese labels) and captioning of photo folders, "
         "fast on CPU, Apple MPS or NVIDIA CUDA.",
    epilog="Examples:\n\nwwts classify ./photos --labels 人,车,动物\n\nwwts caption ./photos --out results.csv"
           "\n\nwwts doctor\n\nwwts classify -h",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"wwts {version('wwts')}")
        except PackageNotFoundError:  # a source tree that is not installed
            typer.echo("wwts (version unknown: not installed)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False,
) -> None:
    """Options that come before the command (``wwts --version``)."""

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_IMAGES_FAILED, EXIT_DEVICE_FAULT = 0, 1, 2, 3, 4
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Lang(str, Enum):
    en = "en"
    zh = "zh"


def _stderr() -> Console:
    return DataConsole(stderr=True)


def _fail(exc: WwtsError, console: Console) -> typer.Exit:
    """One red line on stderr, then exit with the error's code."""
    console.print(styled(("error:", "bold red"), " ", str(exc)))
    return typer.Exit(exc.exit_code)


class _ConsoleLogHandler(logging.Handler):
    """Engine warnings (OOM back-off, device fallback...) as yellow lines on the console."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(styled(("warning:", "yellow"), " ", record.getMessage()))


log = logging.getLogger("wwts.cli")


def _setup_logging(console: Console) -> None:
    logger = logging.getLogger("wwts")
    logger.handlers[:] = [_ConsoleLogHandler(console)]
    logger.propagate = False


# -- shared options ------------------------------------------------------------------------------
# Each option sits in one panel of --help: Inputs, Labels and prompt / Caption, Model and device,
# Output, Runs.

INPUTS, LABELS, CAPTION, MODEL, OUTPUT, RUNS = ("Inputs", "Labels and prompt", "Caption", "Model and device",
                                              "Output", "Runs")

InputsArg = Annotated[list[Path], typer.Argument(help="Image files and/or folders.", show_default=False,
                                                 metavar="PATH")]
ClassifyModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Hub id or local model folder.",
                                                         show_default=default_model("classify"),
                                                         rich_help_panel=MODEL)]
CaptionModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Hub id or local model folder.", rich_help_panel=MODEL,
    show_default=f"{default_model('caption')}; --lang zh: {default_model('caption', 'zh')}")]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="auto, cpu, cuda, cuda:N, mps or xpu.",
                                        rich_help_panel=MODEL)]
DTypeOpt = Annotated[DType, typer.Option("--dtype", case_sensitive=False, metavar="DTYPE",
                                         help="auto, float32, float16 or bfloat16; auto picks per device.",
                                         rich_help_panel=MODEL)]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.",
                                                 show_default="per device", rich_help_panel=MODEL)]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch.",
                                                   show_default="physical cores", rich_help_panel=MODEL)]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="Image decode threads.",
                                                   show_default="from the cores", rich_help_panel=MODEL)]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", rich_help_panel=OUTPUT,
                                                help="Write results to .csv, .json or .jsonl (else a table).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.",
                                            rich_help_panel=OUTPUT)]
RecursiveOpt = Annotated[bool, typer.Option("--recursive/--no-recursive", help="Walk folders recursively.",
                                            rich_help_panel=INPUTS)]
SymlinksOpt = Annotated[bool, typer.Option("--follow-symlinks", rich_help_panel=INPUTS,
                                           help="Follow directory symlinks (loops are detected).")]
HiddenOpt = Annotated[bool, typer.Option("--include-hidden", rich_help_panel=INPUTS, help=(
    "Also take hidden files and folders (.*, macOS ._* files) in folder walks."))]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no start line.",
                                        rich_help_panel=OUTPUT)]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", rich_help_panel=MODEL,
                                        help="Allow a model's own Python code (off by default).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", rich_help_panel=RUNS,
                                         help="Continue an interrupted run: skip images already in --out.")]
RetryOpt = Annotated[bool, typer.Option("--retry-failed", rich_help_panel=RUNS,
                                        help="Process again the images whose record in --out has an error.")]
TruncOpt = Annotated[bool, typer.Option("--allow-truncated", rich_help_panel=INPUTS,
                                        help="Decode truncated files as far as they go (else an error record).")]


class Quantize(str, Enum):
    int8 = "int8"


QuantizeOpt = Annotated[Optional[Quantize], typer.Option("--quantize", case_sensitive=False, rich_help_panel=MODEL,
                                                         help="int8: dynamic int8 Linear layers (CPU only; "
                                                              "make bench measures speed and agreement).")]
MaxPixelsOpt = Annotated[Optional[int], typer.Option("--max-pixels", min=1, rich_help_panel=INPUTS,
                                                     help="Refuse larger images from their header.",
                                                     show_default="Pillow's limit, 89478485")]

CLASSIFY_EXAMPLES = """Examples:

wwts classify ./photos --labels 人,车,动物

wwts classify ./photos --labels-file labels.txt --top-k 3 --out results.csv

wwts classify a.jpg b.png --labels "cat,dog" --prompt "a photo of a {}" -m openai/clip-vit-base-patch32

wwts classify ./photos --labels 人,车 --out r.jsonl --resume"""

CAPTION_EXAMPLES = """Examples:

wwts caption ./photos --out results.csv

wwts caption ./photos --lang zh --out results.jsonl

wwts caption ./photos -m Salesforce/blip-image-captioning-large --num-beams 3 --max-new-tokens 40"""

DOCTOR_EXAMPLES = """Examples:

wwts doctor

wwts doctor --json > facts.json"""


@app.command(epilog=CLASSIFY_EXAMPLES, help=(
    "Zero-shot classification of images against Chinese (or any) labels with Chinese-CLIP.\n\n"
    f"Default model: {default_model('classify')} (--model for another)."))
def classify(
    inputs: InputsArg,
    recursive: RecursiveOpt = True,
    follow_symlinks: SymlinksOpt = False,
    include_hidden: HiddenOpt = False,
    allow_truncated: TruncOpt = False,
    max_pixels: MaxPixelsOpt = None,
    labels: Annotated[Optional[str], typer.Option("--labels", "-l", rich_help_panel=LABELS, help=(
        "Comma-separated labels, e.g. 人,车,动物 (，also works)."))] = None,
    labels_file: Annotated[Optional[Path], typer.Option("--labels-file", rich_help_panel=LABELS,
                                                        help="One label per line; # comments.")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", rich_help_panel=LABELS, help=(
        "Prompt template with {} for the label; \"\" = bare label."), show_default="一张{}的照片。")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, rich_help_panel=LABELS, help=(
        "Labels per image (capped at the number of labels)."))] = 3,
    model: ClassifyModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    trust_remote_code: TrustOpt = False,
    resume: ResumeOpt = False,
    retry_failed: RetryOpt = False,
    quantize: QuantizeOpt = None,
) -> None:
    """Zero-shot classification of images against labels (help text: the decorator's ``help``)."""
    from wwts.core.config import parse_labels, read_labels_file

    params = dict(locals())

    def task_fields() -> dict:
        if labels and labels_file:
            raise _usage("give --labels or --labels-file, not both")
        label_list = parse_labels(labels) if labels else read_labels_file(labels_file) if labels_file else ()
        return {"labels": label_list, "prompt": prompt, "top_k": top_k}

    _run("classify", params, task_fields)


@app.command(epilog=CAPTION_EXAMPLES, help=(
    "Caption images (English with BLIP by default; --lang zh for Chinese).\n\n"
    f"Default model: {default_model('caption')}; with --lang zh: {default_model('caption', 'zh')}."))
def caption(
    inputs: InputsArg,
    recursive: RecursiveOpt = True,
    follow_symlinks: SymlinksOpt = False,
    include_hidden: HiddenOpt = False,
    allow_truncated: TruncOpt = False,
    max_pixels: MaxPixelsOpt = None,
    lang: Annotated[Lang, typer.Option("--lang", case_sensitive=False, rich_help_panel=CAPTION, help=(
        "Caption language: en (BLIP) or zh (a Qwen-VL chat model)."))] = Lang.en,
    prompt: Annotated[Optional[str], typer.Option("--prompt", rich_help_panel=CAPTION, help=(
        "Prompt (BLIP: caption prefix; chat models: the instruction)."))] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, rich_help_panel=CAPTION,
                                                help="Longest caption, in tokens.")] = 30,
    min_new_tokens: Annotated[Optional[int], typer.Option("--min-new-tokens", min=0, rich_help_panel=CAPTION,
                                                          help="Shortest caption, in tokens.")] = None,
    num_beams: Annotated[int, typer.Option("--num-beams", min=1, rich_help_panel=CAPTION,
                                           help="Beam search width (1 = greedy).")] = 1,
    repetition_penalty: Annotated[Optional[float], typer.Option("--repetition-penalty", rich_help_panel=CAPTION,
                                                                help="Penalty > 1 discourages repeats.")] = None,
    model: CaptionModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    trust_remote_code: TrustOpt = False,
    resume: ResumeOpt = False,
    retry_failed: RetryOpt = False,
    quantize: QuantizeOpt = None,
) -> None:
    """Caption images (help text: the decorator's ``help``)."""
    params = dict(locals())
    _run("caption", params, lambda: {
        "lang": lang.value, "prompt": prompt, "max_new_tokens": max_new_tokens,
        "min_new_tokens": min_new_tokens, "num_beams": num_beams, "repetition_penalty": repetition_penalty})


def _run(task: str, params: dict, task_fields) -> None:
    """Build the ``RunConfig`` from a command's parameters (the options both commands share, plus
    ``task_fields()``, which may raise ``UsageError``) and execute it."""
    from wwts.core.config import RunConfig

    err = _stderr()
    try:
        quantize = params["quantize"]
        config = RunConfig(
            task=task, inputs=tuple(params["inputs"]), model=params["model"], device=params["device"],
            dtype=params["dtype"].value, batch_size=params["batch_size"], threads=params["threads"],
            decode_workers=params["workers"], recursive=params["recursive"],
            follow_symlinks=params["follow_symlinks"], include_hidden=params["include_hidden"],
            trust_remote_code=params["trust_remote_code"],
            allow_truncated=params["allow_truncated"], max_pixels=params["max_pixels"],
            quantize=quantize.value if quantize else None, **task_fields())
    except WwtsError as exc:
        raise _fail(exc, err)
    _execute(config, out=params["out"], overwrite=params["overwrite"], quiet=params["quiet"], console=err,
             resume=params["resume"], retry_failed=params["retry_failed"])


@app.command(epilog=DOCTOR_EXAMPLES)
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the facts as one JSON object.")] = False,
    recalibrate: Annotated[bool, typer.Option(
        "--recalibrate", help="Measure again whether bf16 is faster than float32 on this CPU (cached otherwise).")] = False,
) -> None:
    """Show the hardware, libraries and model cache, and what wwts would do on this machine."""
    from wwts.cli.doctor import doctor_command
    from wwts.core.env import prepare_environment

    prepare_environment()
    doctor_command(as_json, Console(highlight=False), recalibrate=recalibrate)


def _usage(message: str) -> WwtsError:
    from wwts.core.errors import UsageError

    return UsageError(message)


def _start_line(plan: dict) -> str:
    """``wwts classify: 20 images · model M · device cpu · dtype float32 · threads 2 · batch size 8``
    from the plan ``engine.start`` passes to its ``loading`` callback (or ``Run.info()``); with
    ``--quantize int8`` the dtype reads ``float32 + int8 Linear layers``."""
    dtype = plan["dtype"] + (f" + {plan['quantize']} Linear layers" if plan.get("quantize") else "")
    return (f"wwts {plan['task']}: {plan['images']} images · model {plan['model']} · device {plan['device']} · "
            f"dtype {dtype} · threads {plan['threads']} · batch size {plan['batch_size']}")


def _cpu_note(plan: dict) -> str | None:
    """On the CPU: a line on how to get a faster device. No speed figure: the progress bar and
    the summary show the speed measured on this machine."""
    if not plan["device"].startswith("cpu"):
        return None
    int8 = "" if plan.get("quantize") else (" --quantize int8 may be faster on this CPU: `make bench` measures "
                                            "it and its agreement with float32.")
    return ("CPU mode: slower than a GPU." + int8 + " With an NVIDIA GPU install a CUDA build of torch "
            "(https://pytorch.org/get-started/locally/); on an Apple-silicon Mac use --device mps.")


@contextmanager
def _loading(console: Console, quiet: bool, plan: dict) -> Iterator[None]:
    """Held while the model loads: the start line, the CPU note, then "loading model NAME …"
    (a spinner on a terminal, one plain line otherwise). Nothing with ``--quiet``."""
    if quiet:
        yield
        return
    console.print(_start_line(plan))
    note = _cpu_note(plan)
    if note:
        console.print(styled((note, "dim")))
    message = f"loading model {plan['model']} …"
    if not console.is_terminal:
        console.print(message)
        yield
        return
    with console.status(styled(message), spinner="dots"):
        yield


#: Run settings that must match for --resume to append to an existing output.
RESUME_KEYS = ("task", "model", "dtype", "quantize", "labels", "prompt", "top_k", "max_new_tokens", "num_beams")


def resume_command(argv: list[str]) -> str:
    """The command line that resumes this run: the same arguments, ``--resume`` instead of ``--overwrite``."""
    args = [a for a in argv if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["wwts", *args])


def _check_settings(out: Path, old: dict | None, new: dict) -> None:
    """Refuse to append to ``out`` when its stored run settings differ from this run's (the
    ``RESUME_KEYS`` present in ``new``); nothing to compare when ``old`` is ``None``.

    Raises:
        UsageError: naming each setting that differs.
    """
    diff = [f"{k}: {old.get(k)!r} in the file, {new.get(k)!r} now"
            for k in RESUME_KEYS if old is not None and k in new and old.get(k) != new.get(k)]
    if diff:
        raise _usage(f"{out} was made with other settings ({'; '.join(diff)}): "
                     "use another --out, or --overwrite to start over")


def _config_settings(config) -> dict:
    """The resume-relevant settings known before the model is loaded (dtype and the caption
    prompt are only known after, and are compared then)."""
    settings = {"task": config.task, "model": config.model or default_model(config.task, config.lang),
                "quantize": config.quantize}
    if config.task == "classify":
        settings.update(labels=list(config.labels), prompt=config.prompt_template, top_k=config.effective_top_k)
    else:
        settings.update(max_new_tokens=config.max_new_tokens, num_beams=config.num_beams)
    return settings


class _Interrupts:
    """SIGINT / SIGTERM: the first asks the run to stop after the batch in flight; a second exits at once."""

    def __init__(self, run) -> None:
        self.run = run
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            # Second signal: exit now. Decode worker processes go first, or they would outlive
            # us and hold the terminal (and a `| tee`) open.
            import multiprocessing

            for child in multiprocessing.active_children():
                child.kill()
            os._exit(128 + signum)
        self.signum = signum
        self.run.stop()

    def __enter__(self) -> "_Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (embedded use): keep the default handlers
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.signum is not None:
            return  # stopping anyway: a second signal during the summary must still exit at once
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _execute(config, *, out: Path | None, overwrite: bool, quiet: bool, console: Console,
             resume: bool = False, retry_failed: bool = False) -> None:
    """Run the engine, draw progress, write records; map errors to exit codes."""
    from wwts.core.env import prepare_environment

    prepare_environment()  # before torch is imported
    _setup_logging(console)
    warnings.filterwarnings("ignore", module="PIL")  # bad EXIF etc. become per-image notes/errors
    try:
        _execute_inner(config, out=out, overwrite=overwrite, quiet=quiet, console=console,
                       resume=resume, retry_failed=retry_failed)
    except KeyboardInterrupt:  # outside the batch loop (model loading, writing the table)
        console.print(styled(("interrupted", "yellow")))
        raise typer.Exit(EXIT_SIGINT)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # a bug or an unforeseen library error: one line, not a traceback
        if os.environ.get("WWTS_DEBUG"):
            raise
        text = " ".join(str(exc).split())
        console.print(styled(("unexpected error:", "bold red"), f" {type(exc).__name__}: {text} "
                             "(set WWTS_DEBUG=1 to see the traceback, and please report it)"))
        raise typer.Exit(EXIT_ERROR)


def _execute_inner(config, *, out, overwrite, console, resume, retry_failed, **kwargs) -> None:
    """Check and lock ``--out`` before anything loads (``core.writers.lock_output``: exit 2 when
    it cannot be written or another run writes it), and hold the lock for the whole run."""
    from wwts.core.output import lock_output

    try:
        lock = lock_output(out, inputs=config.inputs, overwrite=overwrite, resume=resume or retry_failed)
    except WwtsError as exc:
        raise _fail(exc, console)
    with lock:
        _execute_locked(config, out=out, overwrite=overwrite, console=console, resume=resume,
                        retry_failed=retry_failed, **kwargs)


def _execute_locked(config, *, out, overwrite, quiet, console, resume, retry_failed) -> None:
    from wwts.core.output import CaptionResult, ClassifyResult

    record_type = ClassifyResult if config.task == "classify" else CaptionResult
    try:
        if (resume or retry_failed) and out is None:
            raise _usage("--resume and --retry-failed need --out FILE")
        if (resume or retry_failed) and overwrite:
            raise _usage("--overwrite starts over; --resume / --retry-failed continue: choose one")
        import huggingface_hub
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()  # "Loading weights" bars; hub downloads keep theirs
        huggingface_hub.utils.logging.set_verbosity_error()
        from wwts.core import engine
        from wwts.core.output import drop_records, open_writer, output_format, pending_paths, read_existing

        if config.max_pixels:
            from PIL import Image

            # Pillow refuses images over twice this limit before wwts' own header check runs.
            Image.MAX_IMAGE_PIXELS = config.max_pixels
        paths = None
        old_run, failed = None, set()
        if out is not None:
            output_format(out)  # reject a bad extension before loading the model
            resolved = out.resolve()
            if any(resolved == Path(p).resolve() for p in config.inputs if Path(p).is_file()):
                raise _usage(f"--out {out} is one of the input images")
            if resume or retry_failed:
                old_run, old_records = read_existing(out, record_type)
                if old_records and old_run is None:
                    log.warning("%s has no run settings file next to it: cannot check that it was made "
                                "with the same model and labels", out)
                _check_settings(out, old_run, _config_settings(config))
                failed = {r["path"] for r in old_records if r.get("error")}
                found = engine.find_images(config)
                # the same file under any spelling (./a.jpg, $PWD/a.jpg) counts as done
                paths = pending_paths(found, (r["path"] for r in old_records
                                              if not (retry_failed and r["path"] in failed)))
                if not paths:
                    console.print(f"nothing to do: all {len(found)} images are already in {out}", soft_wrap=True)
                    return
        run = engine.start(config, paths=paths, loading=lambda plan: _loading(console, quiet, plan))
        _check_settings(out, old_run, run.info())
        if retry_failed and failed:
            drop_records(out, record_type, failed)
        writer = open_writer(out, record_type, run.info(), overwrite=overwrite,
                             resume=resume or retry_failed) if out is not None else None
    except WwtsError as exc:
        raise _fail(exc, console)

    from wwts.cli.progress import RunProgress

    table_records = []
    exit_code = EXIT_OK
    fault: WwtsError | None = None
    with _Interrupts(run) as interrupts:
        try:
            with RunProgress(console, run.total, config.task, quiet=quiet) as progress:
                for batch in run.batches():
                    if writer is not None:
                        writer.write(batch)
                    else:
                        table_records.extend(batch)
                    progress.advance(len(batch), sum(1 for r in batch if r.error))
        except WwtsError as exc:
            fault = exc
        finally:
            if writer is not None:
                try:
                    writer.close({**run.info(), "complete": run.stats.images == run.total and fault is None})
                except WwtsError as exc:
                    fault = fault or exc

    if table_records:
        _print_table(table_records, config.task)
    stats = run.stats
    if interrupts.signum is not None:
        exit_code = EXIT_SIGINT if interrupts.signum == signal.SIGINT else EXIT_SIGTERM
        console.print(styled(("interrupted:", "yellow"), f" {stats.images} of {run.total} images done"))
    if fault is not None:
        console.print(styled(("error:", "bold red"), f" {fault}"))
        exit_code = fault.exit_code
    # with --out, count only the records really written (not a batch whose write failed)
    images, errors = ((writer.written, writer.written_errors) if writer is not None
                      else (stats.images, stats.errors))
    saved = writer.saved_path if writer is not None else out  # x.json.partial.jsonl when x.json was not published
    if not quiet or errors or exit_code:
        console.print(
            f"done: {images} images, {errors} errors, {stats.seconds:.1f} s "
            f"({stats.images_per_s:.2f} images/s; model load {stats.load_s:.1f} s) on {stats.device} "
            f"{str(run.dtype).replace('torch.', '')}, final batch size {stats.batch_size}"
            + (f" → {saved}" if out is not None else ""))
    if exit_code != EXIT_OK and images < run.total:
        if out is not None:
            console.print(f"results so far are saved in {saved}; to finish the run: "
                          f"{resume_command(sys.argv[1:])}", soft_wrap=True, markup=False)
        else:
            console.print("nothing was saved (no --out)", soft_wrap=True)
    if exit_code == EXIT_OK and errors:
        exit_code = EXIT_IMAGES_FAILED
    if exit_code != EXIT_OK:
        raise typer.Exit(exit_code)


def _print_table(records, task: str) -> None:
    """Print the records as a table on stdout (``display.records_table``).

    On a terminal the table fits the window. When stdout is a pipe or a file, rich would assume
    80 columns and break paths, so the table is rendered at its natural width instead: one line
    per image, paths intact for grep.
    """
    console = DataConsole()
    table = records_table(records, task, one_line=not console.is_terminal)
    if not console.is_terminal:
        natural = console.measure(table, options=console.options.update_width(1_000_000)).maximum
        console.width = max(console.width, natural)
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
