"""The HTML contact sheet of a results file (``wwts report``).

One page: a summary header from the run section (model, device, dtype, images, errors, images/s,
times), a label filter, a sort by score, a text filter, one card per successful record (thumbnail,
path, label(s) with scores as ``<meter>`` bars, caption), and a section of error records shown as
such. Thumbnails sit in a folder beside the page (``REPORT_files/``, loaded lazily, the right
choice for thousands of photos) or inside it as data URIs (``embed=True``: one file to mail).

Every piece of user text (paths, labels, captions, errors, run settings) goes through
``html.escape`` (quotes too, for attributes); links to the photos are percent-encoded URLs
relative to the page. The page loads nothing from the network (a Content-Security-Policy says so
to the browser) and needs no JavaScript framework (``assets.JS``).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..errors import WwtsError, describe
from ..output import Results, record_labels
from .assets import CSS, JS
from .thumbs import THUMB_SIZE, Thumb, make_thumbs, prune

_CSP = ("default-src 'none'; img-src 'self' data: file:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")
_SUMMARY = (("task", "task"), ("model", "model"), ("device", "device"), ("dtype", "dtype"),
            ("quantize", "quantize"), ("images", "images"), ("errors", "errors"), ("images_per_s", "images/s"),
            ("seconds", "seconds"), ("started", "started"), ("finished", "finished"))


@dataclass
class ReportInfo:
    """What ``write_report`` made: the ``page``, the thumbnail ``folder`` (``None`` when embedded),
    counts of ``cards``, ``errors`` and photos ``without_thumb``."""

    page: Path
    folder: Path | None
    cards: int
    errors: int
    without_thumb: int


def thumbs_folder(page: Path) -> Path:
    """``report.html`` → ``report_files`` beside it (the name browsers give a saved page's files)."""
    return page.with_name(f"{page.stem}_files")


def photo_url(photo: str, page_dir: Path) -> str:
    """A URL to ``photo`` (as written in the results, relative to the current folder) from a page
    in ``page_dir``: relative and percent-encoded when possible, else a ``file:`` URI."""
    absolute = Path(os.path.abspath(photo))
    try:
        rel = os.path.relpath(absolute, os.path.abspath(page_dir))
    except ValueError:  # another drive on Windows
        return absolute.as_uri()
    return urllib.parse.quote(rel.replace(os.sep, "/"), safe="/")


def _attr(value: Any) -> str:
    return escape(str(value), quote=True)


def _summary(run: dict[str, Any], n_records: int, n_errors: int) -> str:
    """The ``<dl>`` of run facts (counted from the records when the run section lacks them)."""
    facts = dict(run)
    facts.setdefault("images", n_records)
    facts.setdefault("errors", n_errors)
    if isinstance(run.get("labels"), list):
        facts["labels"] = len(run["labels"])
    items = [(title, facts[key]) for key, title in _SUMMARY + (("labels", "labels"),)
             if facts.get(key) not in (None, "")]
    return "".join(f"<div><dt>{escape(t)}</dt><dd>{escape(str(v))}</dd></div>" for t, v in items)


def _scores(rec: dict[str, Any]) -> str:
    """The ``<ol>`` of a classify record's scores: its label(s) first, then the rest of top_k."""
    chosen = record_labels(rec)
    names = {label for label, _ in chosen}
    rest = [(str(i.get("label")), i.get("score")) for i in rec.get("top_k") or [] if isinstance(i, dict)
            and str(i.get("label")) not in names]
    rows = []
    for n, (label, score) in enumerate(chosen + rest):
        cls = ' class="top"' if n < len(chosen) else ""
        value = f"{float(score):.3f}" if isinstance(score, (int, float)) else ""
        meter = f'<meter min="0" max="1" value="{value}"></meter>' if value else "<span></span>"
        rows.append(f'<li{cls}><span class="label">{escape(label)}</span>{meter}<span class="score">{value}</span></li>')
    return f'<ol class="scores">{"".join(rows)}</ol>' if rows else ""


def _thumb_html(thumb: Thumb | None, photo: str, page_dir: Path, embed: bool) -> str:
    if thumb is None or thumb.file is None:
        why = thumb.error if thumb else "no preview"
        return f'<div class="thumb nothumb" title="{_attr(why)}">no preview</div>'
    src = thumb.data_uri() if embed else urllib.parse.quote(
        os.path.relpath(thumb.file, page_dir).replace(os.sep, "/"), safe="/")
    return (f'<a class="thumb" href="{_attr(photo_url(photo, page_dir))}"><img src="{_attr(src)}" loading="lazy" '
            f'decoding="async" width="{thumb.width}" height="{thumb.height}" alt="{_attr(photo)}"></a>')


def _card(order: int, rec: dict[str, Any], thumb: Thumb | None, page_dir: Path, embed: bool) -> str:
    """One ``<figure class="card">``; error records get ``class="card error"`` and their error."""
    path = str(rec.get("path"))
    labels = [label for label, _ in record_labels(rec)]
    score = next((s for _, s in record_labels(rec) if s is not None), None)
    caption = rec.get("caption")
    text = " ".join([path, *labels, caption or "", rec.get("error") or ""]).lower()
    data = (f'data-order="{order}" data-labels="{_attr(json.dumps(labels, ensure_ascii=False))}" '
            f'data-score="{"" if score is None else score}" data-path="{_attr(path)}" data-text="{_attr(text)}"')
    body = [f'<div class="path">{escape(path)}</div>']
    if rec.get("error"):
        body.append(f'<p class="err"><strong>error:</strong> {escape(str(rec["error"]))}</p>')
        return f'<figure class="card error" {data}><figcaption>{"".join(body)}</figcaption></figure>'
    body.append(_scores(rec))
    if caption is not None:
        body.append(f'<p class="caption">{escape(str(caption))}</p>')
    if rec.get("note"):
        body.append(f'<p class="note">{escape(str(rec["note"]))}</p>')
    if thumb is not None and thumb.file is None:
        body.append(f'<p class="note">no preview: {escape(str(thumb.error))}</p>')
    return (f'<figure class="card" {data}>{_thumb_html(thumb, path, page_dir, embed)}'
            f'<figcaption>{"".join(body)}</figcaption></figure>')


def _controls(records: list[dict[str, Any]], task: str) -> str:
    """The label filter (labels by how many photos have them), the sort and the text filter."""
    counts = Counter(label for rec in records for label, _ in record_labels(rec))
    options = [f'<option value="">all labels ({len(records)})</option>']
    options += [f'<option value="{_attr(label)}">{escape(label)} ({n})</option>' for label, n in counts.most_common()]
    sorts = [("file", "file order"), ("path", "path")]
    if task == "classify":
        sorts[1:1] = [("score-desc", "score, high first"), ("score-asc", "score, low first")]
    sort_opts = "".join(f'<option value="{v}">{t}</option>' for v, t in sorts)
    return (f'<form id="controls" onsubmit="return false"><label>Label <select id="label">{"".join(options)}'
            f'</select></label><label>Sort <select id="sort">{sort_opts}</select></label>'
            '<label>Find <input id="q" type="search" placeholder="path, label, caption"></label>'
            '<span id="shown" aria-live="polite"></span></form>')


def render(results: Results, thumbs: dict[str, Thumb], page_dir: Path, *, embed: bool = False) -> str:
    """The whole page as text (see the module docstring)."""
    records = results.records
    ok = [(n, r) for n, r in enumerate(records) if not r.get("error")]
    bad = [(n, r) for n, r in enumerate(records) if r.get("error")]
    title = f"wwts report: {results.path.name}"
    cards = "".join(_card(n, r, thumbs.get(str(r.get("path"))), page_dir, embed) for n, r in ok)
    errors = "".join(_card(n, r, None, page_dir, embed) for n, r in bad)
    error_section = (f'<section id="errors"><h2>Errors ({len(bad)})</h2><div class="grid">{errors}</div></section>'
                     if bad else "")
    return (f'<!DOCTYPE html>\n<html lang="zh"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<title>{escape(title)}</title><style>{CSS}</style></head>\n<body><header>'
            f'<h1>{escape(title)}</h1><dl class="summary">{_summary(results.run, len(records), len(bad))}</dl>'
            f'{_controls(records, results.task)}</header>\n<main><section id="photos"><h2>Photos ({len(ok)})</h2>'
            f'<div class="grid">{cards}</div></section>\n{error_section}</main>\n<script>{JS}</script></body></html>\n')


def write_report(results: Results, page: Path, *, embed: bool = False, size: int = THUMB_SIZE,
                 cache: Path | None = None, workers: int | None = None) -> ReportInfo:
    """Write the report page of ``results`` to ``page`` (atomically) with its thumbnails.

    Args:
        results: ``core.output.read_results(...)``.
        page: the ``.html`` file to write.
        embed: thumbnails inside the page as data URIs; else in ``thumbs_folder(page)``, which is
            also their cache (unused ones are deleted).
        size: long side of a thumbnail in pixels.
        cache: where embedded thumbnails are cached (default: the per-user cache, ``wwts/thumbs``).
        workers: thumbnail threads (default: the cores, at most 8).

    Raises:
        WwtsError: the page or its thumbnail folder cannot be written.
    """
    page = Path(page)
    page_dir = page.parent if str(page.parent) else Path(".")
    folder = (cache or _user_cache()) if embed else thumbs_folder(page)
    ok_paths = [str(r.get("path")) for r in results.records if not r.get("error")]
    try:
        page_dir.mkdir(parents=True, exist_ok=True)
        thumbs = make_thumbs(ok_paths, folder, size, workers)
        if not embed:
            prune(folder, [t.file for t in thumbs.values() if t.file is not None])
        atomic_write(page, [render(results, thumbs, page_dir, embed=embed).encode("utf-8")])
    except OSError as exc:
        raise WwtsError(f"cannot write the report {page}: {describe(exc)}") from None
    return ReportInfo(page=page, folder=None if embed else folder, cards=len(results.records),
                      errors=len(results.errors), without_thumb=sum(t.file is None for t in thumbs.values()))


def _user_cache() -> Path:
    """``<per-user cache>/wwts/thumbs`` (``platformdirs``: ``~/.cache`` or ``XDG_CACHE_HOME`` on Linux)."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("wwts", appauthor=False)) / "thumbs"
