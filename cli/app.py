"""The ``wwts`` command line (typer): ``classify``, ``caption`` and ``doctor``.

Each run command turns its options into a ``RunConfig`` and an ``OutputOptions`` and makes one
call, ``run.run_command``, which owns progress, the summary and the exit codes (listed in
``cli/run.py`` and the README). The options themselves are in ``cli/options.py``. torch is
imported inside the commands, never at module import, so ``wwts --help`` is instant.

Entry point: the ``wwts`` console script (``main``); ``python -m wwts.cli.app`` does the same.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from ..core import RunConfig, UsageError, parse_labels, prepare_environment, read_labels_file
from .options import (APP_EPILOG, APP_HELP, CAPTION_EXAMPLES, CAPTION_HELP, CLASSIFY_EXAMPLES, CLASSIFY_HELP,
                      DOCTOR_EXAMPLES, BatchOpt, CaptionModelOpt, CaptionPromptOpt, ClassifyModelOpt, DeviceOpt,
                      DType, DTypeOpt, HiddenOpt, InputsArg, JsonOpt, LabelsFileOpt, LabelsOpt, Lang, LangOpt,
                      MaxNewTokensOpt, MaxPixelsOpt, MinNewTokensOpt, NumBeamsOpt, OutOpt, OverwriteOpt,
                      PromptTemplateOpt, QuantizeOpt, QuietOpt, RecalibrateOpt, RecursiveOpt, RepetitionPenaltyOpt,
                      ResumeOpt, RetryOpt, SymlinksOpt, ThreadsOpt, TopKOpt, TruncOpt, TrustOpt, WorkersOpt)
from .run import OutputOptions, exit_on_error, run_command

app = typer.Typer(
    name="wwts",
    help=APP_HELP,
    epilog=APP_EPILOG,
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


def _shared_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The ``RunConfig`` fields that both run commands take, from a command's parameters."""
    quantize = params["quantize"]
    return dict(inputs=tuple(params["inputs"]), model=params["model"], device=params["device"],
                dtype=params["dtype"].value, batch_size=params["batch_size"], threads=params["threads"],
                decode_workers=params["workers"], recursive=params["recursive"],
                follow_symlinks=params["follow_symlinks"], include_hidden=params["include_hidden"],
                trust_remote_code=params["trust_remote_code"], allow_truncated=params["allow_truncated"],
                max_pixels=params["max_pixels"], quantize=quantize.value if quantize else None)


def _output_options(params: dict[str, Any]) -> OutputOptions:
    """The Output and Runs options of a run command."""
    return OutputOptions(out=params["out"], overwrite=params["overwrite"], resume=params["resume"],
                         retry_failed=params["retry_failed"], quiet=params["quiet"])


@app.command(epilog=CLASSIFY_EXAMPLES, help=CLASSIFY_HELP)
def classify(
    inputs: InputsArg,
    recursive: RecursiveOpt = True,
    follow_symlinks: SymlinksOpt = False,
    include_hidden: HiddenOpt = False,
    allow_truncated: TruncOpt = False,
    max_pixels: MaxPixelsOpt = None,
    labels: LabelsOpt = None,
    labels_file: LabelsFileOpt = None,
    prompt: PromptTemplateOpt = None,
    top_k: TopKOpt = 3,
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
    params = dict(locals())
    with exit_on_error():
        if labels and labels_file:
            raise UsageError("give --labels or --labels-file, not both")
        label_list = parse_labels(labels) if labels else read_labels_file(labels_file) if labels_file else ()
        config = RunConfig(task="classify", labels=label_list, prompt=prompt, top_k=top_k, **_shared_fields(params))
    run_command(config, _output_options(params))


@app.command(epilog=CAPTION_EXAMPLES, help=CAPTION_HELP)
def caption(
    inputs: InputsArg,
    recursive: RecursiveOpt = True,
    follow_symlinks: SymlinksOpt = False,
    include_hidden: HiddenOpt = False,
    allow_truncated: TruncOpt = False,
    max_pixels: MaxPixelsOpt = None,
    lang: LangOpt = Lang.en,
    prompt: CaptionPromptOpt = None,
    max_new_tokens: MaxNewTokensOpt = 30,
    min_new_tokens: MinNewTokensOpt = None,
    num_beams: NumBeamsOpt = 1,
    repetition_penalty: RepetitionPenaltyOpt = None,
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
    with exit_on_error():
        config = RunConfig(task="caption", lang=lang.value, prompt=prompt, max_new_tokens=max_new_tokens,
                           min_new_tokens=min_new_tokens, num_beams=num_beams,
                           repetition_penalty=repetition_penalty, **_shared_fields(params))
    run_command(config, _output_options(params))


@app.command(epilog=DOCTOR_EXAMPLES)
def doctor(as_json: JsonOpt = False, recalibrate: RecalibrateOpt = False) -> None:
    """Show the hardware, libraries and model cache, and what wwts would do on this machine."""
    from .doctor_view import doctor_command

    prepare_environment()  # before core.doctor imports torch
    doctor_command(as_json, Console(highlight=False), recalibrate=recalibrate)


def main() -> None:
    """Console-script entry point (``wwts``)."""
    app()


if __name__ == "__main__":
    main()
