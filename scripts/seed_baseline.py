#!/usr/bin/env python3
"""The baselines every wwts speed-up is quoted against, each run as its own process.

Modes (``--mode``):

* ``classify``: the seed articles' zero-shot recipe, the one shown on the model card of
  OFA-Sys/chinese-clip-vit-base-patch16 applied in a loop: for each image,
  ``processor(images=image, text=prompts, return_tensors="pt", padding=True)``, a full
  ``model(**inputs)`` (the label prompts are re-encoded by the text tower for every image), then
  ``logits_per_image.softmax(dim=1)``. One image per forward pass, no batching, fp32.
* ``pipeline``: transformers' own ``pipeline("zero-shot-image-classification", model=DIR,
  batch_size=8)`` called on the list of image paths with ``candidate_labels`` and
  ``hypothesis_template="一张{}的照片。"`` (the pipeline also re-encodes the prompts for every
  image: its preprocess tokenises them per image and its forward runs the full model).
* ``caption``: the seed articles' captioning recipe from the BLIP model card
  (Salesforce/blip-image-captioning-base): for each image,
  ``model.generate(**processor(images=image, return_tensors="pt"), max_new_tokens=20)`` and
  ``processor.decode(..., skip_special_tokens=True)``. One image at a time, greedy, fp32.

All three run under ``torch.no_grad()`` (pipelines do the same internally) with torch's default
thread count, open images with plain ``PIL.Image.open`` (no EXIF rotation, no draft decode: what
the articles do; the pipeline uses its own ``load_image``), and print ONE JSON line on stdout::

    {"mode": ..., "images": N, "load_s": s, "infer_s": s, "seconds": s (import to end),
     "images_per_s": N / infer_s, "results": [{"path", "label", "score"} | {"path", "caption"}]}

``seconds`` is measured from interpreter start (imports and model load included), so it is
comparable with the wall time of a whole ``wwts`` process.

Usage::

    python scripts/seed_baseline.py --mode classify --model models/chinese-clip-vit-base-patch16 \\
        --labels 猫,狗,汽车,花,建筑,食物 PHOTOS_DIR
    python scripts/seed_baseline.py --mode pipeline --model models/chinese-clip-vit-base-patch16 \\
        --labels 猫,狗,汽车,花,建筑,食物 PHOTOS_DIR
    python scripts/seed_baseline.py --mode caption --model models/blip-image-captioning-base PHOTOS_DIR
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
#: Prompt template of the seed articles and of wwts's default (Chinese-CLIP's README uses the
#: same "一张{}的照片。" pattern for zero-shot classification).
PROMPT = "一张{}的照片。"


def list_images(inputs: list[str]) -> list[Path]:
    """Files as given, folders expanded to their image files sorted by name (not recursive)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        else:
            out.append(p)
    return out


def run_classify(model_dir: str, labels: list[str], paths: list[Path]) -> tuple[float, float, list[dict]]:
    """Seed recipe: one image and all label prompts through the full model per call."""
    import torch
    from PIL import Image
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    t0 = time.perf_counter()
    model = ChineseCLIPModel.from_pretrained(model_dir).eval()
    processor = ChineseCLIPProcessor.from_pretrained(model_dir)
    load_s = time.perf_counter() - t0
    texts = [PROMPT.format(label) for label in labels]
    results = []
    t1 = time.perf_counter()
    for path in paths:
        image = Image.open(path)
        inputs = processor(images=image, text=texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            outputs = model(**inputs)
        probs = outputs.logits_per_image.softmax(dim=1)[0]
        i = int(probs.argmax())
        results.append({"path": str(path), "label": labels[i], "score": float(probs[i])})
    return load_s, time.perf_counter() - t1, results


def run_pipeline(model_dir: str, labels: list[str], paths: list[Path], batch_size: int) -> tuple[float, float, list[dict]]:
    """transformers' zero-shot-image-classification pipeline, batch_size images per call."""
    import torch
    from transformers import pipeline

    t0 = time.perf_counter()
    pipe = pipeline("zero-shot-image-classification", model=model_dir, batch_size=batch_size,
                    device="cpu")
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    with torch.no_grad():
        outputs = pipe([str(p) for p in paths], candidate_labels=labels, hypothesis_template=PROMPT)
    infer_s = time.perf_counter() - t1
    results = [{"path": str(p), "label": o[0]["label"], "score": float(o[0]["score"])}
               for p, o in zip(paths, outputs)]
    return load_s, infer_s, results


def run_caption(model_dir: str, paths: list[Path], max_new_tokens: int) -> tuple[float, float, list[dict]]:
    """Seed recipe: ``generate`` on one image at a time."""
    import torch
    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipProcessor

    t0 = time.perf_counter()
    model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = BlipProcessor.from_pretrained(model_dir)
    load_s = time.perf_counter() - t0
    results = []
    t1 = time.perf_counter()
    for path in paths:
        image = Image.open(path).convert("RGB")
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens)
        n_new = int(out.shape[1]) - 1  # generate() starts from the [DEC] bos token
        results.append({"path": str(path), "caption": processor.decode(out[0], skip_special_tokens=True),
                        "new_tokens": n_new})
    return load_s, time.perf_counter() - t1, results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Seed-article and pipeline baselines (one JSON line out).")
    ap.add_argument("inputs", nargs="+", help="image files and/or folders")
    ap.add_argument("--mode", choices=("classify", "pipeline", "caption"), required=True)
    ap.add_argument("--model", required=True, help="model folder (scripts/build_bench_models.py)")
    ap.add_argument("--labels", default="", help="comma-separated labels (classify, pipeline)")
    ap.add_argument("--batch-size", type=int, default=8, help="pipeline batch size (default 8)")
    ap.add_argument("--max-new-tokens", type=int, default=20, help="caption length cap (default 20)")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    paths = list_images(args.inputs)
    labels = [s.strip() for s in args.labels.replace("，", ",").split(",") if s.strip()]
    if args.mode in ("classify", "pipeline") and not labels:
        ap.error("--labels is required for classify and pipeline")
    if args.mode == "classify":
        load_s, infer_s, results = run_classify(args.model, labels, paths)
    elif args.mode == "pipeline":
        load_s, infer_s, results = run_pipeline(args.model, labels, paths, args.batch_size)
    else:
        load_s, infer_s, results = run_caption(args.model, paths, args.max_new_tokens)

    import torch

    record = {
        "mode": args.mode,
        "images": len(paths),
        "threads": torch.get_num_threads(),
        "load_s": round(load_s, 3),
        "infer_s": round(infer_s, 3),
        "seconds": round(time.perf_counter() - T_START, 3),
        "images_per_s": round(len(paths) / infer_s, 3) if infer_s > 0 else None,
        "results": results,
    }
    if args.mode == "pipeline":
        record["batch_size"] = args.batch_size
    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
