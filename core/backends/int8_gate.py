"""The int8 gate: an int8 image tower that ``--backend auto`` chose is used only where it agrees with
float on the run's own photos.

``split`` keeps the last photos of a run out of the calibration set; ``compare`` encodes them with
both image towers and measures, per photo, the cosine between the int8 and the float embedding, and
the share of photos whose top-1 label prompt (over up to ``GATE_PROMPTS`` of the run's prompts) is
the same. ``passes`` holds them against ``MIN_COSINE_MEAN``, ``MIN_COSINE`` and ``MIN_TOP1``.

Thresholds, and how they were set (2-core AMD EPYC Zen 4 VM of issue 22, busy with other work):
int8 that works agrees closely. NNCF's static int8 of the tiny random Chinese-CLIP of the tests
measured cosine min 0.999, mean 0.999, top-1 100 % over 16 prompts on 6 held-out photos; torch's
dynamic int8 of the full-size ViT-B/16 image tower, cosine min 0.9998 on a batch of 8; NNCF int8
of the full-size (random-weight) image tower calibrated on 30 bench photos, cosine min 0.9992,
mean 0.9993 on 16 others (``FULL_SIZE``).
A broken int8 model gives unrelated embeddings (cosine near 0, measured -0.24 min / 0.03 mean on a
perturbed one, top-1 near 1 / prompts). The thresholds sit well below the working figures, with
room for real photos whose label margins are small (a top-1 prompt flips where two prompts score
within the int8 error, hence 85 %, not 100 %), and far above a broken model's.

``PERTURB`` is the test seam: when set, it is applied to the int8 tower's ``(B, D)`` output before
the comparison (a test that simulates a disagreeing int8 model sets it; the run never does).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .tower import normalized

log = logging.getLogger(__name__)

#: Photos held out of the calibration to check int8 on: at most this many, at most a quarter of the run.
GATE_PHOTOS = 32
#: Fewest held-out photos a verdict is given on (a smaller run cannot be gated: it stays float).
MIN_GATE_PHOTOS = 4
#: Most label prompts the top-1 agreement is measured over.
GATE_PROMPTS = 64
MIN_COSINE_MEAN, MIN_COSINE, MIN_TOP1 = 0.97, 0.90, 0.85
#: NNCF int8 vs float of the full-size random-weight Chinese-CLIP image tower (issue 22's session,
#: the busy 2-core Zen 4 VM: 30 bench photos calibrated in 271 s, 16 others checked), cosine.
FULL_SIZE = {"cosine_min": 0.9992, "cosine_mean": 0.9993, "photos": 16}
#: Test seam: ``(B, D) int8 output → (B, D)``, applied before the comparison when set.
PERTURB: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class Verdict:
    """The gate's measurement: ``photos`` held-out photos, the int8-vs-float cosine per photo
    (``cosine_min``, ``cosine_mean``), top-1 agreement over ``prompts`` label prompts (``top1``,
    0-1; 1.0 when fewer than 2 prompts), and whether they pass the thresholds."""

    photos: int
    prompts: int
    cosine_min: float
    cosine_mean: float
    top1: float
    passed: bool

    def as_record(self) -> dict[str, Any]:
        """JSON-ready, for ``hardware.speeds.record_int8`` and the run section."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def line(self) -> str:
        """``int8 agrees with float on 32 held-out photos (cosine min 0.981, mean 0.994; top-1 100 %)``."""
        word = "agrees with" if self.passed else "disagrees with"
        return (f"int8 {word} float on {self.photos} held-out photos (cosine min {self.cosine_min:.3f}, "
                f"mean {self.cosine_mean:.3f}; top-1 {100 * self.top1:.0f} % over {self.prompts} prompts)")


def split(paths: Sequence[Path], calibration_max: int) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """``(calibration photos, held-out photos)`` of a run: the last ``min(GATE_PHOTOS, n // 4)``
    photos are held out (none when fewer than ``MIN_GATE_PHOTOS``), up to ``calibration_max`` of the
    others calibrate."""
    held = min(GATE_PHOTOS, len(paths) // 4)
    if held < MIN_GATE_PHOTOS:
        return tuple(paths[:calibration_max]), ()
    return tuple(paths[:min(calibration_max, len(paths) - held)]), tuple(paths[len(paths) - held:])


def compare(float_tower: Any, int8_tower: Any, pixels: np.ndarray, text: np.ndarray | None) -> Verdict:
    """Encode ``pixels (N, 3, S, S)`` float32 with both image towers and measure their agreement.

    Args:
        float_tower / int8_tower: towers (``encode(pixel_values) → (N, D)``, rows of L2 norm 1).
        pixels: the held-out photos, prepared as the run prepares them.
        text: ``(P, D)`` L2-normalised label-prompt features, or ``None`` (no top-1 measured).

    Raises:
        ValueError: ``pixels`` is empty.
    """
    if len(pixels) == 0:
        raise ValueError("no held-out photo to check int8 on")
    ref = normalized(np.concatenate([np.asarray(float_tower.encode(pixels[i:i + 8])) for i in range(0, len(pixels), 8)]))
    out = np.concatenate([np.asarray(int8_tower.encode(pixels[i:i + 8])) for i in range(0, len(pixels), 8)])
    if PERTURB is not None:
        out = PERTURB(out)
    out = normalized(out)
    cosine = np.sum(ref * out, axis=1)
    top1, prompts = 1.0, 0 if text is None else len(text)
    if prompts >= 2:
        top1 = float(np.mean(np.argmax(ref @ text.T, axis=1) == np.argmax(out @ text.T, axis=1)))
    cos_min, cos_mean = float(np.min(cosine)), float(np.mean(cosine))
    passed = bool(np.isfinite(cosine).all()) and cos_mean >= MIN_COSINE_MEAN and cos_min >= MIN_COSINE \
        and top1 >= MIN_TOP1
    return Verdict(len(pixels), prompts, cos_min, cos_mean, top1, passed)
