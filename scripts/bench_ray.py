"""The numbers behind the README's "Scale" section: what decoding and the model cost per image,
and what Ray costs on one machine.

1. Per-image decode + prepare time on one CPU thread (``core.input.load_image`` with the model's
   draft size, then the task's ``prepare``), over the bench photos.
2. Per-batch model time (``engine.process_batch`` on prepared inputs) at the run's batch size,
   on this machine's device, median of a few batches after one warm-up.
3. Whole runs of the same command, local engine and ``--ray local`` (a one-machine Ray started
   by the run), images/s from each output's ``run`` section and wall time.

From 1 and 2 it prints the CPUs per GPU that keep a GPU busy: ``decode_ms_per_image /
(model_ms_per_batch / batch)``. Usage::

    .venv/bin/python scripts/bench_ray.py --models models            # all three
    .venv/bin/python scripts/bench_ray.py --models models --no-runs  # 1 and 2 only (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = Path("/work/shared/data/exif-samples/jpg")
LABELS = ("猫", "狗", "汽车", "花", "建筑", "食物")


def photos(root: Path, n: int) -> list[Path]:
    """Up to ``n`` JPEGs under ``root`` (the sample images when it is absent)."""
    found = sorted(root.rglob("*.jpg")) if root.is_dir() else []
    return (found or sorted((ROOT / "sample_images").glob("*.jpg")))[:n]


def decode_ms(config, task, paths: list[Path]) -> list[float]:
    """Milliseconds to decode and prepare each of ``paths`` on this thread."""
    from wwts.core.input import load_image

    out = []
    for path in paths:
        t0 = time.perf_counter()
        decoded = load_image(path, draft_size=task.input_size, max_pixels=config.max_pixels)
        task.prepare(decoded.image)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def batch_ms(task, paths: list[Path], batch: int, rounds: int) -> list[float]:
    """Milliseconds of ``process_batch`` for ``batch`` prepared images, ``rounds`` times after a warm-up."""
    from wwts.core import engine
    from wwts.core.input import DecodePool

    pool = DecodePool(1, draft_size=task.input_size, transform=task.prepare)
    items = [(p, pool.submit(p).result()) for p in (paths * batch)[:batch]]
    pool.shutdown()
    engine.process_batch(task, items)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        engine.process_batch(task, items)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def whole_run(folder: Path, model: Path, out: Path, extra: list[str]) -> dict:
    """One ``wwts classify`` process; its run section plus ``wall_s``."""
    cmd = [str(Path(sys.executable).with_name("wwts")), "classify", str(folder), "--labels", ",".join(LABELS),
           "--model", str(model), "--out", str(out), "--overwrite", "--quiet", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    run = json.loads(out.with_name(out.name + ".run.json").read_text(encoding="utf-8"))
    return {**run, "wall_s": round(wall, 1), "cmd": " ".join(cmd)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--photos", type=Path, default=PHOTOS)
    ap.add_argument("--images", type=int, default=32, help="photos for the decode timing and the runs")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-runs", action="store_true", help="skip the whole runs (3)")
    args = ap.parse_args(argv)

    from wwts.core import RunConfig, configure_libraries, engine

    model = args.models / "chinese-clip-vit-base-patch16"
    paths = photos(args.photos, args.images)
    config = RunConfig(task="classify", inputs=tuple(paths), labels=LABELS, model=str(model), dtype="float32",
                       batch_size=args.batch, threads=None)
    configure_libraries(config)
    run = engine.start(config, paths=paths)
    task = run.task
    dec = decode_ms(config, task, paths)
    mod = batch_ms(task, paths, args.batch, args.rounds)
    per_image_model = statistics.median(mod) / args.batch
    facts = {"device": str(task.device), "threads": run.threads, "batch": args.batch,
             "decode_ms_per_image_median": round(statistics.median(dec), 1),
             "decode_ms_per_image_mean": round(statistics.fmean(dec), 1),
             "model_ms_per_batch_median": round(statistics.median(mod), 1),
             "model_ms_per_image": round(per_image_model, 1),
             "cpus_to_keep_this_device_busy": round(statistics.fmean(dec) / per_image_model, 2)}
    print(json.dumps(facts, indent=2))
    if args.no_runs:
        return 0
    work = Path(tempfile.mkdtemp(prefix="wwts-bench-ray-"))
    try:
        folder = work / "photos"
        folder.mkdir()
        for i, p in enumerate(paths):
            shutil.copy(p, folder / f"{i:04d}{p.suffix}")
        common = ["--dtype", "float32", "--batch-size", str(args.batch)]
        local = whole_run(folder, model, work / "local.jsonl", common)
        ray = whole_run(folder, model, work / "ray.jsonl", [*common, "--ray", "local"])
        for name, r in (("local engine", local), ("Ray, one machine", ray)):
            print(f"{name}: {r['images']} images, {r['images_per_s']} images/s over {r['seconds']} s "
                  f"(model load {r['load_s']} s, whole process {r['wall_s']} s): {r['cmd']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
