#!/usr/bin/env python3
"""Images/s of the Chinese-CLIP image tower alone, per compute dtype, on this CPU.

Usage::

    python scripts/tower_bench.py --model models/chinese-clip-vit-base-patch16 [--batch 8] [--rounds 3]
    python scripts/tower_bench.py --matmul-only      # the matrix-multiply probe alone (no model)

Runs ``get_image_features`` on a pre-made ``(batch, 3, 224, 224)`` tensor (no decoding, no
preprocessing, label text not involved) under ``torch.inference_mode()`` with torch's default
threads, in four variants:

* ``fp32``: float32 weights and activations;
* ``autocast bf16``: float32 weights, ``torch.autocast("cpu", dtype=torch.bfloat16)`` (what
  wwts does for ``--dtype bfloat16``);
* ``bf16 weights``: the model loaded with ``dtype=torch.bfloat16`` and bf16 inputs;
* ``int8 dynamic``: ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` to qint8
  (weights int8, activations quantised per batch; fbgemm kernels use AVX512-VNNI).

Each round times two batches per variant, variants interleaved, and keeps a round only when other
programs kept < 0.15 CPUs busy meanwhile (machine busy time minus this process's CPU time); the
best clean round is reported, since interference only ever slows a round down. One JSON line out::

    {"batch": 8, "threads": 2, "images_per_s": {"fp32": 7.8, ...}, "clean_rounds": {...},
     "int8_cosine_min": 0.9996, "matmul": {"shape": [1576, 768, 3072], "gops": {"fp32": 220.1, ...}}}

``int8_cosine_min`` is the smallest cosine similarity between int8 and fp32 image features of the
batch (a quick check that quantisation keeps the embedding).

``matmul`` is the hardware ceiling of this CPU per dtype, in GFLOP/s (GOP/s for int8): the best of
``--rounds`` clean rounds of ``(1576, 768) @ (768, 3072)``, the MLP shape of a ViT-B/16 at batch 8
(8 x 197 tokens), 7.4 GFLOP a call, at torch's default threads: ``fp32`` and ``bf16`` are
``torch.mm`` in that dtype, ``int8`` a dynamically quantised ``nn.Linear`` (fbgemm, activation
quantisation included: the kernel ``wwts --quantize int8`` runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

from bench import _busy_seconds  # scripts/ is on sys.path when this script runs

#: A round during which other programs kept more CPUs busy than this is discarded.
QUIET = 0.15


def wait_quiet(max_wait: float) -> None:
    """Wait (up to ``max_wait`` s) until other programs leave the CPUs alone."""
    t_wait = time.perf_counter()
    while True:
        b0, c0 = _busy_seconds(), time.process_time()
        time.sleep(0.5)
        if (_busy_seconds() - b0 - (time.process_time() - c0)) / 0.5 < QUIET \
                or time.perf_counter() - t_wait > max_wait:
            return


def timed_clean(fn, calls: int = 2) -> float | None:
    """Seconds per call of ``fn`` over ``calls`` calls; ``None`` when other programs disturbed them."""
    b0, c0, t0 = _busy_seconds(), time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    wall = time.perf_counter() - t0
    others = (_busy_seconds() - b0 - (time.process_time() - c0)) / wall
    return wall / calls if others < QUIET else None


#: ViT-B/16 MLP matmul at batch 8: (8 x 197 tokens, 768) @ (768, 3072).
MATMUL_SHAPE = (8 * 197, 768, 3072)


def matmul_rates(rounds: int, max_wait: float) -> dict:
    """Best clean GFLOP/s (GOP/s for int8) of fp32, bf16 and int8 matmuls of ``MATMUL_SHAPE``."""
    import torch

    m, k, n = MATMUL_SHAPE
    a, w = torch.randn(m, k), torch.randn(k, n)
    ab, wb = a.to(torch.bfloat16), w.to(torch.bfloat16)
    lin = torch.nn.Sequential(torch.nn.Linear(k, n, bias=False))
    q8 = torch.ao.quantization.quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)
    kernels = {"fp32": lambda: torch.mm(a, w), "bf16": lambda: torch.mm(ab, wb), "int8": lambda: q8(a)}
    best: dict[str, float | None] = {name: None for name in kernels}
    with torch.inference_mode():
        for fn in kernels.values():  # warm-up: kernel selection, weight packing
            fn()
            fn()
        for _ in range(rounds):
            for name, fn in kernels.items():
                wait_quiet(max_wait)
                secs = timed_clean(fn, calls=4)
                if secs is not None:
                    rate = 2 * m * k * n / secs / 1e9
                    best[name] = rate if best[name] is None else max(best[name], rate)
    return {"shape": list(MATMUL_SHAPE), "threads": torch.get_num_threads(),
            "gops": {name: None if v is None else round(v, 1) for name, v in best.items()}}


def _features(out):
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="Chinese-CLIP model folder (required unless --matmul-only)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-wait", type=float, default=60, help="seconds to wait for a quiet CPU per round")
    ap.add_argument("--matmul-only", action="store_true", help="only the matmul probe (no model)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.matmul_only:
        sys.stdout.write(json.dumps({"matmul": matmul_rates(args.rounds, args.max_wait)}) + "\n")
        return 0
    if not args.model:
        ap.error("--model is required (or --matmul-only)")

    import torch
    from transformers import ChineseCLIPModel

    torch.manual_seed(0)
    m32 = ChineseCLIPModel.from_pretrained(args.model).eval().requires_grad_(False)
    m16 = ChineseCLIPModel.from_pretrained(args.model, dtype=torch.bfloat16).eval().requires_grad_(False)
    q8 = torch.ao.quantization.quantize_dynamic(m32, {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(args.batch, 3, 224, 224)
    xb = x.to(torch.bfloat16)

    def autocast_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m32.get_image_features(pixel_values=x)

    variants = {
        "fp32": lambda: m32.get_image_features(pixel_values=x),
        "autocast bf16": autocast_bf16,
        "bf16 weights": lambda: m16.get_image_features(pixel_values=xb),
        "int8 dynamic": lambda: q8.get_image_features(pixel_values=x),
    }
    best: dict[str, float | None] = {k: None for k in variants}
    clean: dict[str, int] = {k: 0 for k in variants}
    with torch.inference_mode():
        ref, q = _features(variants["fp32"]()), _features(variants["int8 dynamic"]())
        cos = float(torch.nn.functional.cosine_similarity(ref, q).min())
        for fn in variants.values():  # warm-up: kernel selection, JIT
            fn()
        for _ in range(args.rounds):
            for name, fn in variants.items():
                wait_quiet(args.max_wait)
                secs = timed_clean(fn, calls=2)
                if secs is not None:
                    clean[name] += 1
                    ips = args.batch / secs
                    best[name] = ips if best[name] is None else max(best[name], ips)
    record = {"batch": args.batch, "threads": torch.get_num_threads(),
              "images_per_s": {k: None if v is None else round(v, 2) for k, v in best.items()},
              "clean_rounds": clean, "int8_cosine_min": round(cos, 5),
              "matmul": matmul_rates(args.rounds, args.max_wait)}
    sys.stdout.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
