"""The ``wwts`` command line: ``classify``, ``caption`` and ``doctor``.

Parses options, builds a ``RunConfig``, shows progress and writes results; all logic lives in
``wwts.core``. torch is imported inside the commands, never at module import, so ``wwts --help``
is instant. Every ``WwtsError`` becomes one red line on stderr and its exit code, in one place
(``_fail``).

Exit codes: 0 success · 1 unexpected error · 2 usage, model or device error · 3 finished but
some images failed · 4 the device failed mid-run (results so far are saved) · 130 / 143
interrupted by Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from wwts.core.errors import WwtsError
from wwts.core.models import default_model

app = typer.Typer(
    name="wwts",
    help="万物识别 wwts: zero-shot classification (Chinese labels) and captioning of photo folders, "
         "fast on CPU, Apple MPS or NVIDIA CUDA.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)

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
    return Console(stderr=True, highlight=False)


def _fail(exc: WwtsError, console: Console) -> typer.Exit:
    """One red line on stderr, then exit with the error's code."""
    console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, markup=True, highlight=False)
    return typer.Exit(exc.exit_code)


class _ConsoleLogHandler(logging.Handler):
    """Engine warnings (OOM back-off, device fallback...) as yellow lines on the console."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(f"[yellow]warning:[/] {record.getMessage()}", soft_wrap=True, highlight=False)


log = logging.getLogger("wwts.cli")


def _setup_logging(console: Console) -> None:
    logger = logging.getLogger("wwts")
    logger.handlers[:] = [_ConsoleLogHandler(console)]
    logger.propagate = False


# -- shared options ------------------------------------------------------------------------------

InputsArg = Annotated[list[Path], typer.Argument(help="Image files and/or folders.", show_default=False,
                                                 metavar="PATH")]
ClassifyModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Hub id or local model folder.",
                                                         show_default=default_model("classify"))]
CaptionModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Hub id or local model folder.",
    show_default=f"{default_model('caption')}; --lang zh: {default_model('caption', 'zh')}")]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="auto, cpu, cuda, cuda:N, mps or xpu.")]
DTypeOpt = Annotated[DType, typer.Option("--dtype", case_sensitive=False,
                                         help="Compute dtype; auto picks per device.")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1,
                                                 help="Images per forward pass.", show_default="per device")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1,
                                                   help="CPU threads for torch.", show_default="physical cores")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1,
                                                   help="Image decode threads.", show_default="from the cores")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o",
                                                help="Write results to .csv, .json or .jsonl (else a table).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive/--no-recursive", help="Walk folders recursively.")]
SymlinksOpt = Annotated[bool, typer.Option("--follow-symlinks", help="Follow directory symlinks (loops are detected).")]
HiddenOpt = Annotated[bool, typer.Option("--include-hidden", help="Also take hidden files and folders (.*, macOS ._* files) in folder walks.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no start line.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow a model's own Python code (off by default).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run: skip images already in --out.")]
RetryOpt = Annotated[bool, typer.Option("--retry-failed", help="Process again the images whose record in --out has an error.")]
TruncOpt = Annotated[bool, typer.Option("--allow-truncated", help="Decode truncated files as far as they go (else an error record).")]
class Quantize(str, Enum):
    int8 = "int8"


QuantizeOpt = Annotated[Optional[Quantize], typer.Option("--quantize", case_sensitive=False, help="int8: dynamic int8 Linear layers (CPU only; faster, check agreement with make bench).")]
MaxPixelsOpt = Annotated[Optional[int], typer.Option("--max-pixels", min=1, help="Refuse larger images from their header.", show_default="Pillow's limit, 89478485")]


@app.command()
def classify(
    inputs: InputsArg,
    labels: Annotated[Optional[str], typer.Option("--labels", "-l", help="Comma-separated labels, e.g. 人,车,动物 (，also works).")] = None,
    labels_file: Annotated[Optional[Path], typer.Option("--labels-file", help="One label per line; # comments.")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Prompt template with {} for the label; \"\" = bare label.", show_default="一张{}的照片。")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per image (capped at the number of labels).")] = 3,
    model: ClassifyModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    recursive: RecursiveOpt = True,
    follow_symlinks: SymlinksOpt = False,
    include_hidden: HiddenOpt = False,
    quiet: QuietOpt = False,
    trust_remote_code: TrustOpt = False,
    resume: ResumeOpt = False,
    retry_failed: RetryOpt = False,
    allow_truncated: TruncOpt = False,
    max_pixels: MaxPixelsOpt = None,
    quantize: QuantizeOpt = None,
) -> None:
    """Zero-shot classification of images against Chinese (or any) labels with Chinese-CLIP."""
    from wwts.core.config import parse_labels, read_labels_file

    params = dict(locals())

    def task_fields() -> dict:
        if labels and labels_file:
            raise _usage("give --labels or --labels-file, not both")
        label_list = parse_labels(labels) if labels else read_labels_file(labels_file) if labels_file else ()
        return {"labels": label_list, "prompt": prompt, "top_k": top_k}

    _run("classify", params, task_fields)


@app.command()
def caption(
    inputs: InputsArg,
    lang: Annotated[Lang, typer.Option("--lang", case_sensitive=False, help="Caption language: en (BLIP) or zh (a Qwen-VL chat model).")] = Lang.en,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Prompt (BLIP: caption prefix; chat models: the instruction).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest caption, in tokens.")] = 30,
    min_new_tokens: Annotated[Optional[int], typer.Option("--min-new-tokens", min=0, help="Shortest caption, in tokens.")] = None,
    num_beams: Annotated[int, typer.Option("--num-beams", min=1, help="Beam search width (1 = greedy).")] = 1,
    repetition_penalty: Annotated[Optional[float], typer.Option("--repetition-penalty", help="Penalty > 1 discourages repeats.")] = None,
    model: CaptionModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    recursive: RecursiveOpt = True,
    follow_symlinks: SymlinksOpt = False,
    include_hidden: HiddenOpt = False,
    quiet: QuietOpt = False,
    trust_remote_code: TrustOpt = False,
    resume: ResumeOpt = False,
    retry_failed: RetryOpt = False,
    allow_truncated: TruncOpt = False,
    max_pixels: MaxPixelsOpt = None,
    quantize: QuantizeOpt = None,
) -> None:
    """Caption images (English with BLIP by default; --lang zh for Chinese)."""
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


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the facts as one JSON object.")] = False,
) -> None:
    """Show the hardware, libraries and model cache, and what wwts would do on this machine."""
    from wwts.cli.doctor import doctor_command
    from wwts.core.env import prepare_environment

    prepare_environment()
    doctor_command(as_json, Console(highlight=False))


def _usage(message: str) -> WwtsError:
    from wwts.core.errors import UsageError

    return UsageError(message)


def _start_line(run) -> str:
    info = run.info()
    return (f"wwts {info['task']}: {run.total} images · model {info['model']} · device {info['device']} · "
            f"dtype {info['dtype']} · threads {info['threads']} · batch size {info['batch_size']}")


def _cpu_note(run) -> str | None:
    if run.device.type != "cpu":
        return None
    from wwts.core import device as devices

    estimate = devices.cpu_speed_estimate(run.config.task)
    speed = f" (expect about {estimate:.0f} images/s here)" if estimate else ""
    int8 = "" if run.config.quantize else " --quantize int8 runs about 1.5x faster on the CPU."
    return (f"CPU mode is slower than a GPU{speed}.{int8} With an NVIDIA GPU install a CUDA build of torch "
            "(https://pytorch.org/get-started/locally/); on an Apple-silicon Mac use --device mps.")


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
        console.print("[yellow]interrupted[/]", soft_wrap=True)
        raise typer.Exit(EXIT_SIGINT)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # a bug or an unforeseen library error: one line, not a traceback
        if os.environ.get("WWTS_DEBUG"):
            raise
        text = " ".join(str(exc).split())
        console.print(f"[bold red]unexpected error:[/] {type(exc).__name__}: {text} "
                      "(set WWTS_DEBUG=1 to see the traceback, and please report it)", soft_wrap=True)
        raise typer.Exit(EXIT_ERROR)


def _execute_inner(config, *, out, overwrite, quiet, console, resume, retry_failed) -> None:
    from wwts.core.results import CaptionResult, ClassifyResult

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
        from wwts.core.writers import drop_records, open_writer, output_format, read_existing

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
                done = {r["path"] for r in old_records} - (failed if retry_failed else set())
                found = engine.find_images(config)
                paths = [p for p in found if str(p) not in done]
                if not paths:
                    console.print(f"nothing to do: all {len(found)} images are already in {out}", soft_wrap=True)
                    return
        run = engine.start(config, paths=paths)
        _check_settings(out, old_run, run.info())
        if retry_failed and failed:
            drop_records(out, record_type, failed)
        writer = open_writer(out, record_type, run.info(), overwrite=overwrite,
                             resume=resume or retry_failed) if out is not None else None
    except WwtsError as exc:
        raise _fail(exc, console)

    if not quiet:
        console.print(_start_line(run), soft_wrap=True)
        note = _cpu_note(run)
        if note:
            console.print(f"[dim]{note}[/]", soft_wrap=True)

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
        console.print(f"[yellow]interrupted:[/] {stats.images} of {run.total} images done", soft_wrap=True)
    if fault is not None:
        console.print(f"[bold red]error:[/] {fault}", soft_wrap=True)
        exit_code = fault.exit_code
    if not quiet or stats.errors or exit_code:
        console.print(
            f"done: {stats.images} images, {stats.errors} errors, {stats.seconds:.1f} s "
            f"({stats.images_per_s:.2f} images/s; model load {stats.load_s:.1f} s) on {stats.device} "
            f"{str(run.dtype).replace('torch.', '')}, final batch size {stats.batch_size}"
            + (f" → {out}" if out is not None else ""), soft_wrap=True)
    if exit_code != EXIT_OK and stats.images < run.total:
        if out is not None:
            console.print(f"results so far are saved in {out}; to finish the run: "
                          f"{resume_command(sys.argv[1:])}", soft_wrap=True, markup=False)
        else:
            console.print("nothing was saved (no --out)", soft_wrap=True)
    if exit_code == EXIT_OK and stats.errors:
        exit_code = EXIT_IMAGES_FAILED
    if exit_code != EXIT_OK:
        raise typer.Exit(exit_code)


def _print_table(records, task: str) -> None:
    """Print the records as a rich table on stdout.

    On a terminal the table fits the window (long paths and captions fold). When stdout is a
    pipe or a file, rich would assume 80 columns and fold paths mid-name, so the table is
    rendered at its natural width instead: one line per image, paths intact for grep.
    """
    console = Console(highlight=False)
    table = Table(show_lines=False)
    table.add_column("path", overflow="fold")
    if task == "classify":
        table.add_column("label")
        table.add_column("score", justify="right")
        table.add_column("top-k")
    else:
        table.add_column("caption", overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("error", style="red", overflow="fold")
    for r in records:
        size = f"{r.width}x{r.height}" if r.width else ""
        if task == "classify":
            top = ", ".join(f"{ls.label} {ls.score:.3f}" for ls in r.top_k)
            score = "" if r.score is None else f"{r.score:.3f}"
            table.add_row(r.path, r.label or "", score, top, size, r.error or "")
        else:
            table.add_row(r.path, r.caption or "", size, r.error or "")
    if not console.is_terminal:
        natural = console.measure(table, options=console.options.update_width(1_000_000)).maximum
        console.width = max(console.width, natural)
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
