"""``wwts search TEXT PATH...`` and ``wwts embed PATH... --out FILE.parquet``.

Both run the classify model through the same engine and the same run loop as ``wwts classify``
(``run_loop.run_records``: decode pool, device, dtype, batch size, the embedding store: only
images the store lacks are decoded and encoded; progress, summary, interrupts, exit codes), with
``core.tasks.SearchTask`` / ``EmbedTask`` as the head and their own record sinks
(``sinks.SearchSink``: ranks the images by cosine similarity to the text and prints or writes the
best ``--top``; ``sinks.EmbedSink``: streams one Parquet row per image).

Exit codes as for classify: 0, 2 (usage, model, device, output; pyarrow missing for ``embed``),
3 (some images failed: ``search`` names them on stderr, ``embed`` writes them as rows with an
``error``), 4 (device fault), 130 / 143 (interrupted: nothing is published).
"""

from __future__ import annotations

from ..core import RunConfig, UsageError
from .options import (Backend, BackendOpt, BatchOpt, ClassifyDeviceOpt, ClassifyModelOpt, DType, DTypeOpt, HiddenOpt,
                      InputsArg, MaxPixelsOpt, OutOpt, OverwriteOpt, QuietOpt, RecursiveOpt, SymlinksOpt, ThreadsOpt,
                      TruncOpt, TrustOpt, WorkersOpt, run_fields)
from .options import ExactPixelsOpt, ImageSizeOpt
from .run_loop import exit_on_error, run_records
from .sinks import EmbedSink, SearchSink
from .store_options import NoStoreOpt, ParquetOutOpt, QueryArg, SearchPromptOpt, StoreDirOpt, TopOpt


def search(
    query: QueryArg,
    inputs: InputsArg,
    top: TopOpt = 20,
    prompt: SearchPromptOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    recursive: RecursiveOpt = True,
    follow_symlinks: SymlinksOpt = False,
    include_hidden: HiddenOpt = False,
    allow_truncated: TruncOpt = False,
    max_pixels: MaxPixelsOpt = None,
    model: ClassifyModelOpt = None,
    device: ClassifyDeviceOpt = "auto",
    backend: BackendOpt = Backend.auto,
    image_size: ImageSizeOpt = None,
    exact_pixels: ExactPixelsOpt = False,
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    trust_remote_code: TrustOpt = False,
    store: StoreDirOpt = None,
    no_store: NoStoreOpt = False,
) -> None:
    """Rank images by similarity to a text (help text: the registration's ``help``)."""
    params = dict(locals())
    with exit_on_error():
        if not query.strip():
            raise UsageError("the text to search for is empty")
        config = RunConfig(task="classify", head="search", labels=(query.strip(),),
                           prompt="" if prompt is None else prompt, **run_fields(params))
    run_records(config, SearchSink(top=top, out=out, overwrite=overwrite, quiet=quiet))


def embed(
    inputs: InputsArg,
    out: ParquetOutOpt,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    recursive: RecursiveOpt = True,
    follow_symlinks: SymlinksOpt = False,
    include_hidden: HiddenOpt = False,
    allow_truncated: TruncOpt = False,
    max_pixels: MaxPixelsOpt = None,
    model: ClassifyModelOpt = None,
    device: ClassifyDeviceOpt = "auto",
    backend: BackendOpt = Backend.auto,
    image_size: ImageSizeOpt = None,
    exact_pixels: ExactPixelsOpt = False,
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    trust_remote_code: TrustOpt = False,
    store: StoreDirOpt = None,
    no_store: NoStoreOpt = False,
) -> None:
    """Export image embeddings to Parquet (help text: the registration's ``help``)."""
    params = dict(locals())
    with exit_on_error():
        config = RunConfig(task="classify", head="embed", **run_fields(params))
    run_records(config, EmbedSink(out=out, overwrite=overwrite, quiet=quiet))
