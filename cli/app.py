"""The ``wwts`` command line (typer): ``classify``, ``caption`` and ``doctor``.

Each run command turns its options into a ``RunConfig`` (``options.run_fields``) and a record
sink (``sinks.ResultsSink``) and makes one call, ``run_loop.run_records``, which owns progress,
the summary and the exit codes (listed in ``cli/run_loop.py`` and the README). The options themselves are in ``cli/options.py``. torch is
imported inside the commands, never at module import, so ``wwts --help`` is instant.

Entry point: the ``wwts`` console script (``main``); ``python -m wwts.cli.app`` does the same.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from ..core import DEFAULT_OTHER_LABEL, RunConfig, UsageError, parse_labels, prepare_environment, read_labels_file
from .options import (APP_EPILOG, APP_HELP, CAPTION_EXAMPLES, CAPTION_HELP, CLASSIFY_EXAMPLES, CLASSIFY_HELP,
                      DOCTOR_EXAMPLES, BatchOpt, CaptionModelOpt, CaptionPromptOpt, ClassifyModelOpt, DeviceOpt,
                      DType, DTypeOpt, HiddenOpt, InputsArg, JsonOpt, LabelsFileOpt, LabelsOpt, Lang, LangOpt,
                      MaxNewTokensOpt, MaxPixelsOpt, MinNewTokensOpt, NumBeamsOpt, OutOpt, OverwriteOpt,
                      PromptTemplateOpt, QuantizeOpt, QuietOpt, RecalibrateOpt, RecursiveOpt, RepetitionPenaltyOpt,
                      RayOpt, ResumeOpt, RetryOpt, SymlinksOpt, ThreadsOpt, TopKOpt, TruncOpt, TrustOpt, WorkersOpt,
                      LabelMapOpt, MinScoreOpt, MultiLabelOpt, OtherLabelOpt, PromptsFileOpt, StrictLabelsOpt,
                      ThresholdOpt, VocabOpt, run_fields)
from .options import ReportOpt, WriteXmpOpt, XmpName, XmpNameOpt
from .options import Backend, BackendOpt, ClassifyDeviceOpt
from .options import ExactPixelsOpt, ImageSizeOpt
from .conversions_commands import conversions_app
from .results_commands import REPORT_EXAMPLES, REPORT_HELP, SORT_EXAMPLES, SORT_HELP, report, sort
from .console import DataConsole, log_to
from .run_loop import exit_on_error, run_records
from .sinks import ResultsSink
from .search_commands import embed, search
from .store_commands import store_app
from .store_options import EMBED_EXAMPLES, EMBED_HELP, SEARCH_EXAMPLES, SEARCH_HELP, NoStoreOpt, StoreDirOpt

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
    """Options that come before the command (``wwts --version``); the ``wwts`` loggers' warnings go
    to stderr from here on, so a warning raised while the options are read (a GB18030 labels file)
    is a ``warning:`` line like the engine's."""
    log_to(DataConsole(stderr=True))


def _label_fields(params: dict[str, Any]) -> dict[str, Any]:
    """Classify's vocabulary, prompt-ensemble, multi-label, abstain and label-map fields (the
    ``--prompts`` and ``--label-map`` files are read here, before anything loads).

    Raises:
        UsageError: an unreadable or invalid ``--prompts`` / ``--label-map`` file.
    """
    prepare_environment()  # before core.labels imports torch
    from ..core.labels import read_label_map, read_prompts_file

    return dict(vocab=params["vocab"], prompts=read_prompts_file(params["prompts"]) if params["prompts"] else (),
                multi_label=params["multi_label"], threshold=params["threshold"], min_score=params["min_score"],
                other_label=params["other_label"], strict_labels=params["strict_labels"],
                label_map=read_label_map(params["label_map"]) if params["label_map"] else None)


def _sink(params: dict[str, Any]) -> ResultsSink:
    """Where a classify / caption run's records go: its Output and Runs options."""
    return ResultsSink(out=params["out"], overwrite=params["overwrite"], resume=params["resume"],
                       retry_failed=params["retry_failed"], quiet=params["quiet"], report=params["report"],
                       write_xmp=params["write_xmp"], xmp_name=params["xmp_name"].value)


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
    vocab: VocabOpt = None,
    prompts: PromptsFileOpt = None,
    multi_label: MultiLabelOpt = False,
    threshold: ThresholdOpt = 0.5,
    min_score: MinScoreOpt = None,
    other_label: OtherLabelOpt = DEFAULT_OTHER_LABEL,
    strict_labels: StrictLabelsOpt = False,
    label_map: LabelMapOpt = None,
    model: ClassifyModelOpt = None,
    device: ClassifyDeviceOpt = "auto",
    backend: BackendOpt = Backend.auto,
    image_size: ImageSizeOpt = None,
    exact_pixels: ExactPixelsOpt = False,
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    report: ReportOpt = None,
    write_xmp: WriteXmpOpt = False,
    xmp_name: XmpNameOpt = XmpName.append,
    trust_remote_code: TrustOpt = False,
    resume: ResumeOpt = False,
    retry_failed: RetryOpt = False,
    quantize: QuantizeOpt = None,
    ray: RayOpt = None,
    store: StoreDirOpt = None,
    no_store: NoStoreOpt = False,
) -> None:
    """Zero-shot classification of images against labels (help text: the decorator's ``help``)."""
    params = dict(locals())
    with exit_on_error():
        if labels and labels_file:
            raise UsageError("give --labels or --labels-file, not both")
        label_list = parse_labels(labels) if labels else read_labels_file(labels_file) if labels_file else ()
        config = RunConfig(task="classify", labels=label_list, prompt=prompt, top_k=top_k,
                           **_label_fields(params), **run_fields(params))
    run_records(config, _sink(params))


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
    backend: BackendOpt = Backend.auto,
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    report: ReportOpt = None,
    write_xmp: WriteXmpOpt = False,
    xmp_name: XmpNameOpt = XmpName.append,
    trust_remote_code: TrustOpt = False,
    resume: ResumeOpt = False,
    retry_failed: RetryOpt = False,
    quantize: QuantizeOpt = None,
    ray: RayOpt = None,
    store: StoreDirOpt = None,
    no_store: NoStoreOpt = False,
) -> None:
    """Caption images (help text: the decorator's ``help``)."""
    params = dict(locals())
    with exit_on_error():
        config = RunConfig(task="caption", lang=lang.value, prompt=prompt, max_new_tokens=max_new_tokens,
                           min_new_tokens=min_new_tokens, num_beams=num_beams,
                           repetition_penalty=repetition_penalty, **run_fields(params))
    run_records(config, _sink(params))


app.command(epilog=REPORT_EXAMPLES, help=REPORT_HELP)(report)
app.command(epilog=SORT_EXAMPLES, help=SORT_HELP)(sort)
app.add_typer(conversions_app, name="conversions")
app.command(epilog=SEARCH_EXAMPLES, help=SEARCH_HELP)(search)
app.command(epilog=EMBED_EXAMPLES, help=EMBED_HELP)(embed)
app.add_typer(store_app, name="store")


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
