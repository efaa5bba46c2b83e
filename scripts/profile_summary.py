#!/usr/bin/env python3
"""Summarise a py-spy ``--format raw`` (collapsed stacks) profile of a wwts run.

Usage::

    py-spy record --native --threads --idle -r 50 -f raw -o prof.txt -- \\
        .venv/bin/wwts classify PHOTOS --labels ... --model DIR --out x.json --quiet
    python scripts/profile_summary.py prof.txt [--top 20]

Prints, per thread, the samples and the share of wall time; for the main thread, the inclusive
share of a few phases (imports, model load, label text encoding, image preprocess, model forward,
waiting for decoded images, writing), and the top-N frames by inclusive and by self samples.
Phases are matched by function names of wwts and transformers; a sample counts once per phase.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

#: phase -> regexes matched against a frame "func (file:line)"
PHASES = {
    "imports (module loading)": [r"^_find_and_load ", r"^<module> \(cli/app"],
    "model load (from_pretrained)": [r"from_pretrained", r"core/models.py"],
    "label text encoding": [r"text_features", r"get_text_features", r"_text_inputs"],
    "image preprocess (processor)": [r"(EmbedTask|ZeroShotTask)\.prepare", r"_preprocessor_pixels", r"CaptionTask\.collate",
                                     r"image_processing", r"preprocess \(transformers"],
    "model forward": [r"run_model \(", r"\.generate \(", r"get_image_features"],
    "waiting for decoded images": [r"Future\.result", r"wait \(threading", r"as_completed",
                                   r"DecodePool\.", r"Queue\.get"],
    "image decode (PIL, any thread)": [r"ImageFile\.load", r"decoder\.decode", r"Image\.draft",
                                       r"core/images.py"],
    "writing results": [r"core/writers.py"],
}


#: leaf-frame category -> regexes, for the samples inside the model forward (main thread)
LEAF_KINDS = {
    "matmul: MKL sgemm (fp32)": [r"mkl_blas_.*sgemm", r"sgemm"],
    "matmul: MKL bf16 gemm": [r"gemm_bf16"],
    "matmul: int8 (fbgemm/qlinear)": [r"fbgemm", r"qlinear", r"PackedGemm"],
    "unsymbolised JIT code (oneDNN kernels)": [r"^0x[0-9a-f]+ \(\?\)"],
    "OpenMP barrier / spin (libgomp)": [r"libgomp", r"sched_yield"],
    "dtype casts / copies": [r"copy_kernel", r"reduced_float_copy", r"_to_copy", r"convert"],
    "attention (flash / sdpa)": [r"flash_attention", r"scaled_dot_product"],
    "elementwise (gelu, mul, add...)": [r"VectorizedLoop", r"sigmoid", r"gelu", r"Sleef", r"add_kernel"],
    "layer norm / softmax": [r"layer_norm", r"LayerNorm", r"RowwiseMoments", r"softmax",
                             r"exp_reduce_sum"],
    "python / dispatcher overhead": [r"\.py:\d+\)", r"OperatorEntry", r"Dispatcher", r"libpython"],
}


def parse(path: str):
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = stack.split(";")
        yield frames[0], frames[1:], n


def short(frame: str) -> str:
    return re.sub(r"/[^ ]*/site-packages/", "", frame)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    samples = list(parse(args.profile))
    per_thread = collections.Counter()
    for thread, _, n in samples:
        per_thread[re.sub(r"\(\d+\)", "", thread).strip()] += n
    main_name = next((t for t in per_thread if "MainThread" in t), None)
    wall = per_thread[main_name] if main_name else max(per_thread.values())
    print(f"{sum(per_thread.values())} samples; main thread {wall} samples (= wall time)")
    for t, n in per_thread.most_common(8):
        print(f"  {t:40s} {n:6d}  {100 * n / wall:5.1f}% of wall")
    phase_n = collections.Counter()
    incl, self_ = collections.Counter(), collections.Counter()
    for thread, frames, n in samples:
        is_main = "MainThread" in thread
        for phase, pats in PHASES.items():
            if phase.endswith("any thread)") or is_main:
                if any(re.search(p, f) for f in frames for p in pats):
                    phase_n[phase] += n
        if not is_main:
            continue
        for f in set(frames):
            incl[short(f)] += n
        if frames:
            self_[short(frames[-1])] += n
    print("\nphases (inclusive, % of wall):")
    for phase in PHASES:
        print(f"  {phase:34s} {phase_n[phase]:6d}  {100 * phase_n[phase] / wall:5.1f}%")
    kinds = collections.Counter()
    fwd_total = 0
    fwd_pats = PHASES["model forward"]
    for thread, frames, n in samples:
        if "MainThread" not in thread or not any(re.search(p, f) for f in frames for p in fwd_pats):
            continue
        fwd_total += n
        leaf = frames[-1] if frames else ""
        kind = next((k for k, pats in LEAF_KINDS.items() if any(re.search(p, leaf) for p in pats)), "other")
        kinds[kind] += n
    if fwd_total:
        print("\ninside the model forward, by leaf frame (% of forward):")
        for kind, n in kinds.most_common():
            print(f"  {kind:40s} {n:6d}  {100 * n / fwd_total:5.1f}%")
    print(f"\ntop {args.top} self frames, main thread (% of wall):")
    for f, n in self_.most_common(args.top):
        print(f"  {100 * n / wall:5.1f}%  {f[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
