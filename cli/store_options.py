"""Options and help texts of the embedding store: ``--store`` / ``--no-store`` (classify, search,
embed), and the ``wwts search``, ``wwts embed`` and ``wwts store`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

#: The --help panel of the store options.
STORE_PANEL = "Embedding store"

StoreDirOpt = Annotated[Optional[Path], typer.Option(
    "--store", rich_help_panel=STORE_PANEL, metavar="DIR", file_okay=False,
    help="Folder of the embedding store (one SQLite file per model).",
    show_default="the user cache, e.g. ~/.cache/wwts/embeddings")]
NoStoreOpt = Annotated[bool, typer.Option(
    "--no-store", rich_help_panel=STORE_PANEL,
    help="Compute every embedding; read and write no store.")]
TopOpt = Annotated[int, typer.Option("--top", "-n", min=1, help="Images to keep, best first.")]
QueryArg = Annotated[str, typer.Argument(help="The text to search for, e.g. 海边的日落.", show_default=False,
                                         metavar="TEXT")]
SearchPromptOpt = Annotated[Optional[str], typer.Option(
    "--prompt", help="Template with {} for the text (default: the bare text).")]
ParquetOutOpt = Annotated[Path, typer.Option(
    "--out", "-o", help="The .parquet file to write (replaced when it exists).", show_default=False)]

SEARCH_HELP = ("Rank images by similarity to a text (text-to-image retrieval with the classify model).\n\n"
               "Embeddings already in the store are reused; only new or changed photos are encoded.")
SEARCH_EXAMPLES = """Examples:

wwts search "海边的日落" ./photos --top 20

wwts search "一只猫" ./photos --top 50 --out cats.csv"""
EMBED_HELP = ("Export image embeddings (path, content hash, model key, embedding per row) to Parquet.\n\n"
              'Needs pyarrow: pip install "wwts[store]".')
EMBED_EXAMPLES = """Examples:

wwts embed ./photos --out emb.parquet"""
STORE_HELP = "The embedding store: what it holds, pruning, clearing."
STORE_DIR_ONLY = Annotated[Optional[Path], typer.Option(
    "--store", metavar="DIR", file_okay=False, help="Folder of the embedding store.",
    show_default="the user cache, e.g. ~/.cache/wwts/embeddings")]
