"""Prompt-ensemble rows of ``make bench`` (issue 14): the ensemble costs nothing per image.

The label text is encoded once, while the model loads (``ZeroShotTask.setup``), so a run with a
16-template ensemble should process images at the rate of a one-template run: its extra cost is in
``load_s`` only. Three rows on the full-size Chinese-CLIP, torch float32, the same photos and
labels: one template, the default Chinese ensemble (``core.labels.CHINESE_TEMPLATES``), and 16
templates from a ``--prompts`` file. ``ensemble_lines`` compares their images/s (measured over
the batch loop, model load excluded) and their load times.

Not run by the tests: ``make bench`` runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

#: 16 Chinese templates (CHINESE_TEMPLATES and 12 more in the style of cn_clip's ImageNet ones).
SIXTEEN = ["一张{}的照片。", "{}的照片。", "一张包含{}的图片。", "照片里有{}。", "一张模糊的{}的照片。",
           "一张清晰的{}的照片。", "一张很好的{}的照片。", "一张{}的特写照片。", "一张小{}的照片。",
           "一张大{}的照片。", "一张明亮的{}的照片。", "一张昏暗的{}的照片。", "一张{}的裁剪照片。",
           "一张黑白的{}的照片。", "一张{}的低分辨率照片。", "一张{}的高质量照片。"]


def ensemble_rows(classify: Callable[..., tuple], work: Path) -> list[tuple]:
    """``(Row, out)`` pairs: one template, the default ensemble, 16 templates (``classify`` is
    bench.py's row builder)."""
    prompts = work / "prompts-16.txt"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("\n".join(SIXTEEN) + "\n", encoding="utf-8")
    base = ("--backend", "torch", "--dtype", "float32")
    default = work / "prompts-default.txt"
    default.write_text("\n".join(SIXTEEN[:4]) + "\n", encoding="utf-8")  # = CHINESE_TEMPLATES
    return [classify("wwts classify, 1 prompt template", "wwts-prompts-1.json", *base, "--prompt", SIXTEEN[0]),
            classify("wwts classify, default prompt ensemble (4)", "wwts-prompts-default.json", *base,
                     "--prompts", str(default)),
            classify("wwts classify, 16 prompt templates", "wwts-prompts-16.json", *base, "--prompts", str(prompts))]


def ensemble_lines(rows: list) -> list[str]:
    """Report lines: images/s and model load (text encoding included) of each ensemble row, and
    the per-image cost of 16 templates relative to one."""
    lines = ["Prompt ensembles (label text encoded once, at load; images/s excludes the load):", ""]
    rates = []
    for row in rows:
        run = row.data.get("run", {}) if not row.error else {}
        rate, load = run.get("images_per_s"), run.get("load_s")
        rates.append(rate)
        lines.append(f"- {row.name}: " + (f"{rate} images/s, model load + text {load} s" if rate else
                                           f"not measured ({row.error or 'no run section'})"))
    if rates[0] and rates[-1]:
        lines.append(f"- 16 templates vs 1: {rates[-1] / rates[0]:.2f}x the images/s (1.00 = no cost per image)")
    return lines
