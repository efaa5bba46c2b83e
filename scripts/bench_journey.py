"""Benchmark rows of a user's journey with the defaults (issue 22, "Fast by default"), run by
scripts/bench.py: whole processes, each "machine" a conversion cache and run record of its own
(``XDG_CACHE_HOME``), emptied where a row says "a machine's first run".

Rows (``wwts classify`` with default options, ``--no-store`` as every timing row of bench.py):

- ``journey: first run, 92 photos`` -- a fresh machine (empty cache): the size rule decides
  whether converting repays 92 photos (issue: >= 1.3x the HF pipeline);
- ``journey: large run, N corpus photos`` -- on the same machine, ``mkcorpus.py`` photos (1,500 in
  a full bench): enough to repay a conversion and int8 calibration (gated against float);
- ``journey: 92 photos again`` -- the same machine after it (issue: >= 5x the seed loop and >= 3.5x
  the pipeline);
- ``journey: first run, M corpus photos`` -- a fresh machine on ``mkcorpus.py`` photos (4,000 in a
  full bench; issue: >= 2x 5.4 images/s, the VNNI machine's figure), its steady images/s and peak
  RSS reported.

Each row's line says the backend and precision it ran and the reason it gave (the run section's
``backend_reason``), and the int8 gate's verdict when one was measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from bench_decode import corpus  # mkcorpus.py photos, counted recursively (it writes sub-folders)

#: Targets of the issue.
FIRST_VS_PIPELINE, AGAIN_VS_SEED, AGAIN_VS_PIPELINE, BIG_IPS = 1.3, 5.0, 3.5, 2 * 5.4


def journey_rows(classify: Callable, work: Path, photos: Path, *, large: int = 1500, big: int = 4000) -> list:
    """The journey's rows as ``(Row, out)`` pairs (see the module docstring). ``photos``: the bench
    folder (92 photos); ``large`` / ``big``: corpus sizes (0: the row is left out)."""
    machine, fresh = work / "journey-machine", work / "journey-fresh"
    rows = [classify("journey: a machine's first run, bench photos", "journey-first.json")]
    rows[0][0].cmd = ["sh", "-c", 'rm -rf "$0" && exec env XDG_CACHE_HOME="$0" "$@"', str(machine), *rows[0][0].cmd]
    if large:
        one = classify(f"journey: large run, {large} corpus photos", "journey-large.json")
        one[0].cmd = ["env", f"XDG_CACHE_HOME={machine}",
                      *[str(corpus(work / f"corpus-{large}", large)) if c == str(photos) else c for c in one[0].cmd]]
        rows.append(one)
    again = classify("journey: bench photos again", "journey-again.json")
    again[0].cmd = ["env", f"XDG_CACHE_HOME={machine}", *again[0].cmd]
    rows.append(again)
    if big:
        row = classify(f"journey: a machine's first run, {big} corpus photos", "journey-big.json")
        row[0].cmd = ["sh", "-c", 'rm -rf "$0" && exec env XDG_CACHE_HOME="$0" "$@"', str(fresh),
                      *[str(corpus(work / f"corpus-{big}", big)) if c == str(photos) else c for c in row[0].cmd]]
        rows.append(row)
    return rows


def _how(row) -> str:
    run = row.data.get("run", {})
    how = f"{run.get('backend', '?')} {run.get('dtype', '?')}{' + int8' if run.get('quantize') == 'int8' else ''}"
    return f"{how}; {run.get('backend_reason', '')}"


def _verdict(machine: Path) -> str:
    """The int8 gate's verdict in a journey machine's run records, in words ('' when none)."""
    try:
        data = json.loads((machine / "wwts" / "run-records.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    for models in data.get("machines", {}).values():
        for model, entry in models.items():
            v = entry.get("int8") or {}
            if v:
                return (f"- int8 gate ({Path(model).name}): {'passed' if v.get('passed') else 'refused'} on "
                        f"{v.get('photos')} held-out photos: cosine min {v.get('cosine_min')}, mean "
                        f"{v.get('cosine_mean')}; top-1 {v.get('top1')} over {v.get('prompts')} prompts")
    return ""


def journey_lines(rows: list, seed, pipe, work: Path) -> list[str]:
    """Target lines of the journey rows against the seed loop and the pipeline rows."""
    def ratio(ref, row) -> float | None:
        return ref.wall_s / row.wall_s if ref and ref.wall_s and row.wall_s else None

    def mark(value, target) -> str:
        return "not measured" if value is None else f"{value:.2f}x ({'PASS' if value >= target else 'FAIL'})"

    by_name = {r.name: r for r, _ in rows}
    lines = []
    for row, _ in rows:
        lines.append(f"- {row.name}: {row.error or f'{row.wall_s:.1f} s, {row.images} photos'} [{_how(row)}]")
    first = by_name.get("journey: a machine's first run, bench photos")
    again = by_name.get("journey: bench photos again")
    if first is not None:
        lines.append(f"- first run vs HF pipeline: {mark(ratio(pipe, first), FIRST_VS_PIPELINE)} "
                     f"(target >= {FIRST_VS_PIPELINE}x)")
    if again is not None:
        lines.append(f"- bench photos again vs seed loop: {mark(ratio(seed, again), AGAIN_VS_SEED)} (target >= "
                     f"{AGAIN_VS_SEED}x); vs pipeline: {mark(ratio(pipe, again), AGAIN_VS_PIPELINE)} (target >= "
                     f"{AGAIN_VS_PIPELINE}x)")
    for row, _ in rows:
        if "corpus photos" in row.name and "first run" in row.name and row.wall_s:
            ips = row.images / row.wall_s
            lines.append(f"- {row.name}: {ips:.1f} images/s whole process, steady {row.steady_ips or 0:.1f}, "
                         f"peak RSS {row.rss_mib or 0:.0f} MiB (target >= {BIG_IPS:.1f} images/s): "
                         f"{'PASS' if ips >= BIG_IPS else 'FAIL'}")
    verdict = _verdict(work / "journey-machine")
    return lines + ([verdict] if verdict else [])
