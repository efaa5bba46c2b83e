"""Benchmark rows of the caption store (issue 24, "Captions at classify's speed"), run by scripts/bench.py.

Rows (whole processes, bench.py's caption photos and model, default dtype, its new-token count):

- ``caption store: first run (empty store)`` -- ``wwts caption --store DIR`` from an empty store
  (its ``*.sqlite*`` files deleted inside the timed process; the once-per-model identification of
  the model folder's weights, ``weights-index.json``, is kept);
- ``caption store: second run`` -- the same photos and settings: every caption read from the store,
  no model loaded, no torch imported (``tasks/caption_store.py: StoredCaptionTask``);
- ``caption store: other --max-new-tokens`` -- the same store with one token fewer: recomputes.

Backend rows (``caption_backend_rows``): ``wwts caption --backend openvino`` on a machine's first
run (converts BLIP's two towers into a fresh conversion cache), with the conversion saved, and with
``--quantize int8`` (NNCF int8 weights, made from the saved towers on that run); their
captions against ``--dtype float32`` on torch (token for token: equal captions) and their speed
against the seed's one-at-a-time ``generate``.

Targets (the issue): second run >= 20x faster than the first (wall, whole process); its captions
equal the first run's; another ``--max-new-tokens`` recomputes every photo (``cached`` 0).

Standalone (the two store rows only, for a quick look)::

    python scripts/bench_caption.py --model /work/models/blip-image-captioning-base PHOTOS [--tokens 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

#: Target of the issue: second caption run over the same photos vs the first.
SECOND_RUN_SPEEDUP = 20.0


def caption_store_rows(caption: Callable, store_dir: Path, tokens: int) -> list:
    """``[(Row, out)]`` of the caption store rows, built with bench.py's ``caption(name, out, *extra)``."""
    store = ["--store", str(store_dir)]
    first = caption("wwts caption, caption store: first run (empty store)", "wwts-caption-store-first.json", *store)
    first[0].cmd = ["sh", "-c", 'mkdir -p "$0" && rm -f "$0"/*.sqlite* && exec "$@"', str(store_dir), *first[0].cmd]
    second = caption("wwts caption, caption store: second run", "wwts-caption-store-second.json", *store)
    other = caption(f"wwts caption, caption store: --max-new-tokens {tokens - 1}", "wwts-caption-store-other.json",
                    *store, "--max-new-tokens", str(tokens - 1))
    return [first, second, other]


def caption_backend_rows(caption: Callable, cache: Path) -> list:
    """``[(Row, out)]``: OpenVINO's first run (an emptied conversion cache ``cache``) and its run
    with the conversion saved there, both ``--no-store`` (bench.py's ``caption`` adds it)."""
    first = caption("wwts caption --backend openvino, a machine's first run (converts)",
                    "wwts-caption-openvino-first.json", "--backend", "openvino")
    first[0].cmd = ["sh", "-c", 'rm -rf "$0" && exec env XDG_CACHE_HOME="$0" "$@"', str(cache), *first[0].cmd]
    cached = caption("wwts caption --backend openvino (conversion saved)", "wwts-caption-openvino.json",
                     "--backend", "openvino")
    cached[0].cmd = ["env", f"XDG_CACHE_HOME={cache}", *cached[0].cmd]
    int8 = caption("wwts caption --backend openvino --quantize int8 (compresses the saved towers' weights once)",
                   "wwts-caption-openvino-int8.json", "--backend", "openvino", "--quantize", "int8")
    int8[0].cmd = ["env", f"XDG_CACHE_HOME={cache}", *int8[0].cmd]
    return [first, cached, int8]


def caption_backend_lines(rows: list, seed, fp32) -> list[str]:
    """Target lines of ``caption_backend_rows``' rows: captions equal torch float32's, speed vs the seed."""
    lines = []
    for row, _ in rows:
        if row.error or not row.wall_s:
            lines.append(f"- {row.name}: not measured ({row.error})")
            continue
        same = sum(_captions(row.data).get(k) == v for k, v in _captions(fp32.data).items()) if not fp32.error else 0
        speed = f"{seed.wall_s / row.wall_s:.2f}x the seed" if seed.wall_s else "seed not measured"
        if "int8" in row.name:  # int8 is not held to float's tokens: its agreement is reported
            lines.append(f"- {row.name}: {row.wall_s:.1f} s = {speed}; exact captions vs torch float32 "
                         f"{same}/{row.images}")
            continue
        lines.append(f"- {row.name}: {row.wall_s:.1f} s = {speed} (target >= 3x); captions = torch float32 "
                     f"{same}/{row.images} (target: all): {'PASS' if same == row.images else 'FAIL'}")
    return lines


def _captions(data: dict) -> dict[str, str]:
    return {r["path"]: r.get("caption") for r in data.get("results", [])}


def caption_store_lines(rows: list) -> list[str]:
    """Target lines of ``caption_store_rows``' rows (after they ran)."""
    (first, _), (second, _), (other, _) = rows
    if not (first.wall_s and second.wall_s):
        return [f"- caption store, second run: not measured ({first.error or second.error})"]
    speedup = first.wall_s / second.wall_s
    same = _captions(first.data) == _captions(second.data)
    lines = [f"- caption store, second run: {speedup:.1f}x the first run ({first.wall_s:.1f} s -> {second.wall_s:.1f} s, "
             f"whole process; captions {'equal' if same else 'DIFFER'}) (target >= {SECOND_RUN_SPEEDUP:g}x): "
             f"{'PASS' if speedup >= SECOND_RUN_SPEEDUP and same else 'FAIL'}"]
    if other.wall_s:
        cached = other.data.get("run", {}).get("cached")
        lines.append(f"- caption store, another --max-new-tokens: {other.wall_s:.1f} s, {cached} of {other.images} "
                     f"served from the store (target 0: recomputed): {'PASS' if not cached else 'FAIL'}")
    return lines


def _timed(cmd: list[str]) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0, json.loads(out.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The caption store's first and second run, whole processes.")
    ap.add_argument("photos")
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=20)
    args = ap.parse_args(argv)
    wwts = str(Path(sys.executable).with_name("wwts"))
    with tempfile.TemporaryDirectory() as store:
        cmd = [wwts, "caption", args.photos, "--model", args.model, "--max-new-tokens", str(args.tokens),
               "--quiet", "--store", store]
        first_s, first = _timed(cmd)
        second_s, second = _timed(cmd)
    same = _captions(first) == _captions(second)
    print(f"first run {first_s:.1f} s, second run {second_s:.2f} s: {first_s / second_s:.1f}x; captions "
          f"{'equal' if same else 'differ'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
