"""Benchmark rows of the closed-set recognisers (issue 23), run by scripts/bench.py or alone.

Rows (whole processes, one run each, peak RSS from ``wait4``):

- ResNeSt-101 with 54,092 classes, random weights at full size (``models/resnest101-general``,
  built by ``make bench-models`` from the architecture ModelScope's pipeline uses), on the bench
  photos: the seed's way (``torch.load`` + ``eval``, one image per call, its transforms: this
  script's ``--seed`` mode) against ``wwts classify`` by default and on each backend (the first
  run of a backend converts and caches; the second reads the conversion).
- The real EfficientNet-Lite0 (``scripts/export_efficientnet_lite0.py``) on the same photos:
  images/s per backend and precision, and agreement with torch float32 (the package's own model in
  this process: top-1 agreement and max |dp| over each photo's top-5).

Targets (the issue): best backend >= 5x the seed's way, default >= 3x.

Usage: python scripts/bench_recogniser.py --models models --photos DIR [--limit N] [--report FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESNEST_NAME = "resnest101-general"
LITE0_NAME = "efficientnet-lite0"
CLASSES = 54092
TARGETS = {"best": 5.0, "default": 3.0}


def build_resnest_folder(path: Path) -> dict:
    """A ModelScope-layout folder: ResNeSt-101 (54,092 classes) random weights saved as a state dict
    under ``module.`` keys (as a DataParallel checkpoint), ``meta_info.txt`` of made-up names."""
    import torch

    from wwts.core.models.resnest import resnest101

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = resnest101(CLASSES)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path / "pytorch_model.pt")
    (path / "meta_info.txt").write_text("".join(f"n{i:08d}\t类别{i}\n" for i in range(CLASSES)), encoding="utf-8")
    (path / "configuration.json").write_text(json.dumps({"framework": "pytorch", "task": "general-recognition",
                                                         "wwts_bench_build": True}), encoding="utf-8")
    return {"classes": CLASSES, "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}


def seed_way(folder: Path, photos: list[Path]) -> None:
    """The seed's loop: ``torch.load`` + ``eval``, then per photo: open, EXIF, Resize(256)
    bilinear, CenterCrop(224), ImageNet normalisation, one forward, top-1. Prints one JSON line."""
    import torch
    from PIL import Image, ImageOps

    from wwts.core.models.closed_set import MODELSCOPE_TRANSFORM
    from wwts.core.models.resnest import resnest101

    labels = [line.split("\t")[1] for line in (folder / "meta_info.txt").read_text(encoding="utf-8").splitlines()]
    state = torch.load(folder / "pytorch_model.pt", map_location="cpu", weights_only=True)
    model = resnest101(len(labels))
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    model.eval()
    done = 0
    with torch.no_grad():
        for path in photos:
            with Image.open(path) as im:
                image = ImageOps.exif_transpose(im).convert("RGB")
            logits = model(torch.from_numpy(MODELSCOPE_TRANSFORM(image)))
            labels[int(logits.argmax())]
            done += 1
    print(json.dumps({"images": done}))


def run(cmd: list[str], env: dict) -> dict:
    """One process: ``{"wall_s", "rss_mib", "rc", "tail"}`` (peak RSS of the process, ``wait4``)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = proc.stdout.read().decode("utf-8", "replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - t0, "rss_mib": usage.ru_maxrss / 1024, "rc": proc.returncode,
            "tail": out.strip().splitlines()[-1:] if proc.returncode else []}


def lite0_reference(folder: Path, photos: list[Path]) -> dict[str, dict[str, float]]:
    """torch float32 probabilities of the package's model, duplicate names summed, per photo name."""
    import importlib.util

    import torch

    from wwts.core import models
    from wwts.core.input import load_image

    spec = importlib.util.spec_from_file_location("export_lite0", ROOT / "scripts" / "export_efficientnet_lite0.py")
    exporter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exporter)
    model, classifier = exporter.torch_model(), models.load_closed_set("x", folder)
    out = {}
    for path in photos:
        image = load_image(path, draft_size=classifier.draft_size).image
        with torch.no_grad():
            probs = model(torch.from_numpy(classifier.transform(image))).softmax(-1)[0].tolist()
        summed: dict[str, float] = {}
        for label, p in zip(classifier.labels, probs):
            summed[label] = summed.get(label, 0.0) + p
        out[path.name] = summed
    return out


def agreement(result: Path, reference: dict[str, dict[str, float]]) -> str:
    records = json.loads(result.read_text(encoding="utf-8"))["results"]
    same, worst = 0, 0.0
    for rec in records:
        ref = reference[Path(rec["path"]).name]
        same += rec["label"] == max(ref, key=ref.get)
        worst = max([worst] + [abs(t["score"] - ref[t["label"]]) for t in rec["top_k"]])
    return f"top-1 {same}/{len(records)}, max |dp| {worst:.4f}"


def recogniser_lines(models_dir: Path, photos_dir: Path, work: Path, limit: int | None = None) -> list[str]:
    """Run every row; Markdown lines for the report."""
    python = sys.executable
    wwts = [str(Path(python).with_name("wwts"))]
    photos = sorted(p for p in photos_dir.iterdir() if p.is_file())[:limit]
    folder = photos_dir if limit is None else work / "recogniser-photos"
    if limit is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for p in photos:
            (folder / p.name).write_bytes(p.read_bytes())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(work / "recogniser-cache")}
    resnest, lite0 = models_dir / RESNEST_NAME, models_dir / LITE0_NAME
    lines = [f"## Closed-set recognisers ({len(photos)} photos, one run per row)", "",
             "| row | wall s | images/s | peak RSS MiB | vs seed | agreement |", "|---|---|---|---|---|---|"]

    def row(name: str, cmd: list[str], seed_s: float | None = None, note: str = "", cache: str = "default") -> dict:
        # each backend converts into a cache of its own, so that its first run does convert
        r = run(cmd, {**env, "XDG_CACHE_HOME": str(work / "recogniser-cache" / cache)})
        speed = f"{seed_s / r['wall_s']:.2f}x" if seed_s else ""
        status = "" if r["rc"] == 0 else f"FAILED rc={r['rc']} {r['tail']}"
        lines.append(f"| {name} | {r['wall_s']:.1f} | {len(photos) / r['wall_s']:.2f} | {r['rss_mib']:.0f} | {speed} | "
                     f"{note or status} |")
        print(lines[-1], file=sys.stderr, flush=True)
        return r

    def classify(model: Path, out: str, *extra: str) -> list[str]:
        return [*wwts, "classify", str(folder), "--model", str(model), "--quiet", "--no-store", "--top-k", "5",
                "--out", str(work / out), "--overwrite", *extra]

    if (resnest / "pytorch_model.pt").is_file():
        seed = row("ResNeSt-101 54,092 classes: seed's way (torch.load, 1 image/call)",
                   [python, __file__, "--seed", str(resnest), *map(str, photos)])
        base = seed["wall_s"] if seed["rc"] == 0 else None
        shutil.rmtree(work / "recogniser-cache" / "default", ignore_errors=True)
        row("ResNeSt-101: wwts default, a machine's first run", classify(resnest, "rs-default.json"), base)
        row("ResNeSt-101: wwts default, later run", classify(resnest, "rs-default-2.json"), base)
        stored = [a for a in classify(resnest, "rs-store-1.json") if a != "--no-store"]
        stored += ["--store", str(work / "recogniser-store")]
        shutil.rmtree(work / "recogniser-store", ignore_errors=True)
        row("ResNeSt-101: wwts default, embedding store, first run", stored, base)
        row("ResNeSt-101: wwts default, store holds the features, --top-k 3 (head only)",
            [*stored, "--top-k", "3"], base)  # the last --top-k counts
        for backend in ("openvino", "onnxruntime"):
            shutil.rmtree(work / "recogniser-cache" / backend, ignore_errors=True)
            row(f"ResNeSt-101: wwts --backend {backend}, first run (converts)",
                classify(resnest, f"rs-{backend}-1.json", "--backend", backend), base, cache=backend)
            row(f"ResNeSt-101: wwts --backend {backend}, later run",
                classify(resnest, f"rs-{backend}-2.json", "--backend", backend), base, cache=backend)
    else:
        lines.append(f"| ResNeSt-101 | not run: {resnest} missing (make bench-models) | | | | |")
    if (lite0 / "model.onnx").is_file():
        reference = lite0_reference(lite0, photos)
        for name, extra in (("onnxruntime float32", ("--backend", "onnxruntime")),
                            ("openvino float32", ("--backend", "openvino")),
                            ("onnxruntime int8 (dynamic)", ("--backend", "onnxruntime", "--quantize", "int8")),
                            ("openvino int8 (NNCF static, quantized in this run)", ("--backend", "openvino", "--quantize", "int8"))):
            out = f"lite0-{name.split()[0]}-{name.split()[1]}.json"
            r = run(classify(lite0, out, *extra), env)
            note = agreement(work / out, reference) if r["rc"] == 0 else f"FAILED {r['tail']}"
            lines.append(f"| EfficientNet-Lite0 (real weights): {name} | {r['wall_s']:.1f} | "
                         f"{len(photos) / r['wall_s']:.2f} | {r['rss_mib']:.0f} | | vs torch fp32: {note} |")
            print(lines[-1], file=sys.stderr, flush=True)
    else:
        lines.append(f"| EfficientNet-Lite0 | not run: {lite0} missing (scripts/export_efficientnet_lite0.py) | | | | |")
    lines += ["", f"Targets: best backend >= {TARGETS['best']}x the seed's way, default >= {TARGETS['default']}x "
              "(wall time of whole processes, model load included)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--seed":
        seed_way(Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--photos", type=Path, required=True, help="folder of photos (bench.py: its classify folder)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--limit", type=int, default=None, help="only the first N photos (a short run)")
    ap.add_argument("--report", type=Path, default=None, help="write the Markdown lines here")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    lines = recogniser_lines(args.models.resolve(), args.photos.resolve(), args.work.resolve(), args.limit)
    text = "\n".join(lines) + "\n"
    if args.report:
        args.report.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
