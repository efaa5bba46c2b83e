"""Backend rows of ``make bench`` (issue 12): each backend and precision against torch float32.

For every variant two rows: the first, converting (and quantizing) run with an empty conversion
cache, on its own row, then a run that loads the saved conversion. ``bench.py`` times them like
its other rows and adds top-1 agreement and max |dp| against ``wwts classify --backend torch
--dtype float32``; ``embedding_agreement`` adds the min and mean cosine of the image embeddings
against torch float32 on the same photos (in this process, from the cached conversions).

Not run by the tests: ``make bench`` runs it.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Callable

#: ``(tag, --backend, --dtype, int8)``: OpenVINO f32, its default (bf16 where the CPU has it) and
#: NNCF int8; ONNX Runtime float32 and dynamic int8.
VARIANTS = [
    ("openvino-fp32", "openvino", "float32", False),
    ("openvino-default", "openvino", "auto", False),
    ("openvino-int8", "openvino", "auto", True),
    ("onnxruntime-fp32", "onnxruntime", "float32", False),
    ("onnxruntime-int8", "onnxruntime", "float32", True),
]


def variant_args(backend: str, dtype: str, int8: bool) -> list[str]:
    """The classify options of one variant."""
    return ["--backend", backend, "--dtype", dtype] + (["--quantize", "int8"] if int8 else [])


def backend_rows(classify: Callable[..., tuple], cache_root: Path) -> list[tuple]:
    """``(Row, out)`` pairs: for each variant its first (converting) run, with a conversion cache
    emptied before every repeat, and its cached run (``classify`` is bench.py's row builder)."""
    out = []
    for tag, backend, dtype, int8 in VARIANTS:
        cache = cache_root / tag
        first, first_out = classify(f"wwts classify {tag}: first run (converts)", f"wwts-{tag}-first.json",
                                    *variant_args(backend, dtype, int8))
        first.cmd = ["sh", "-c", f"rm -rf {shlex.quote(str(cache))} && exec env XDG_CACHE_HOME="
                     f"{shlex.quote(str(cache))} " + " ".join(shlex.quote(c) for c in first.cmd)]
        cached, cached_out = classify(f"wwts classify {tag}: conversion cached", f"wwts-{tag}.json",
                                      *variant_args(backend, dtype, int8))
        cached.cmd = ["env", f"XDG_CACHE_HOME={cache}", *cached.cmd]
        out += [(first, first_out), (cached, cached_out)]
    return out


def embedding_agreement(clip: Path, photos: Path, cache_root: Path, labels: tuple[str, ...]) -> list[str]:
    """One line per variant: min and mean cosine of its image embeddings against torch float32
    on ``photos`` (each variant loads its cached conversion from ``cache_root / tag``)."""
    import os

    import torch

    from wwts.core import RunConfig, engine
    from wwts.core.input import load_image

    def embeddings(backend: str, dtype: str, int8: bool) -> torch.Tensor:
        config = RunConfig(task="classify", inputs=(photos,), labels=labels, model=str(clip), backend=backend,
                           dtype=dtype, quantize="int8" if int8 else None)
        run = engine.start(config)
        task = run.task
        # torch tensors (torch-loaded task) or NumPy arrays (a task served from a saved conversion)
        pixels = torch.cat([torch.as_tensor(task.prepare(load_image(p, draft_size=task.input_size).image))
                            for p in run.paths])
        return torch.cat([torch.as_tensor(task.image_encoder.encode(pixels[i:i + 8]))
                          for i in range(0, len(pixels), 8)])

    saved = os.environ.get("XDG_CACHE_HOME")
    lines = []
    try:
        ref = embeddings("torch", "float32", False)
        for tag, backend, dtype, int8 in VARIANTS:
            os.environ["XDG_CACHE_HOME"] = str(cache_root / tag)
            try:
                cos = torch.nn.functional.cosine_similarity(embeddings(backend, dtype, int8), ref)
                lines.append(f"- {tag}: image embedding cosine vs torch float32: min {cos.min():.5f}, "
                             f"mean {cos.mean():.5f} ({len(cos)} photos)")
            except Exception as exc:  # one variant failing must not hide the others
                lines.append(f"- {tag}: not measured ({exc})")
    finally:
        if saved is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved
    return lines


#: Issue 12's targets for the best backend on this CPU (whole processes, conversion cached).
VS_SEED, VS_PIPELINE, STEADY_VS_TORCH_FP32 = 5.0, 3.5, 4.0


def backend_checks(rows: list[tuple], seed, pipe, torch_fp32) -> list[str]:
    """Target lines of issue 12 from the rows of ``backend_rows``: the fastest variant whose
    conversion is cached against the seed's loop and HF's pipeline (wall time, model load and
    loading the conversion included), its steady state against torch float32 eager in the same
    bench run, and each variant's first (converting) run's extra time on its own line."""
    def ok(flag: bool) -> str:
        return "PASS" if flag else "FAIL"

    pairs = [(rows[i][0], rows[i + 1][0]) for i in range(0, len(rows), 2)]
    cached = [c for _, c in pairs if c.wall_s and not c.error]
    if not cached or not seed.wall_s or not pipe.wall_s:
        return ["- backends: not measured (a row failed)"]
    best = min(cached, key=lambda r: r.wall_s)
    name = best.name.removeprefix("wwts classify ").removesuffix(": conversion cached")
    vs_seed, vs_pipe = seed.wall_s / best.wall_s, pipe.wall_s / best.wall_s
    lines = [f"- best backend on this CPU ({name}, conversion cached, {best.wall_s:.1f} s): {vs_seed:.2f}x the "
             f"seed's loop {ok(vs_seed >= VS_SEED)} (target >= {VS_SEED:g}x), {vs_pipe:.2f}x HF's pipeline "
             f"{ok(vs_pipe >= VS_PIPELINE)} (target >= {VS_PIPELINE:g}x)"]
    if best.steady_ips and torch_fp32.steady_ips:
        ratio = best.steady_ips / torch_fp32.steady_ips
        lines.append(f"- steady state, {name}: {best.steady_ips:.1f} images/s = {ratio:.2f}x torch float32 eager "
                     f"({torch_fp32.steady_ips:.1f}) {ok(ratio >= STEADY_VS_TORCH_FP32)} "
                     f"(target >= {STEADY_VS_TORCH_FP32:g}x)")
    for first, again in pairs:
        tag = first.name.removeprefix("wwts classify ").removesuffix(": first run (converts)")
        if first.wall_s and again.wall_s:
            lines.append(f"- {tag}: the first, converting run took {first.wall_s - again.wall_s:+.1f} s more than a "
                         f"run on the saved conversion ({first.wall_s:.1f} s vs {again.wall_s:.1f} s)")
    return lines
