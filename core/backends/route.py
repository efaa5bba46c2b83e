"""The size rule of ``--backend auto`` on a CPU: convert only when the photos repay it.

A classify run on a CPU can start at once on PyTorch, start from a saved conversion, or first
convert the towers for OpenVINO (float, or NNCF int8 after calibrating on the run's photos) and
then run faster. Each is a ``Route``: seconds before the first photo (``start_s``: model load, plus
the conversion and calibration when not saved) and images/s after it. ``choose`` picks:

1. ``now``: of the routes that need no conversion (PyTorch, saved conversions), the one that
   finishes this run first (``start_s + images / images_per_s``);
2. a route that converts is taken when the photos this model has processed on this machine (earlier
   runs' ``done`` plus this run's) repay its extra start: ``(done + images) × (1/now_rate −
   1/rate) > start_s − now.start_s``; of several, the one that saves most. Counting earlier runs
   makes small runs repeated many times convert in the end, once their sum would have repaid it.

The figures are this machine's records (``hardware.speeds``: each classify run records its load
seconds and steady images/s per path) and, for a path never run here, ``PRIORS`` scaled by how fast
this machine ran the paths it recorded against them (``pace``). A caption run passes
``CAPTION_PRIORS`` instead (``build.caption_size_rule``): its records are kept under the caption
model's own key, so each kind of run is weighed against its own figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

#: ``path: (images/s, load_s from a saved conversion or without one, load_s of a converting run)``
#: for a path this machine never ran. Derived from issue 22's table (``make bench``, whole processes,
#: full-size random-weight Chinese-CLIP ViT-B/16, 92 photos, batch 8, on a 2-core AVX512-VNNI Xeon
#: VM without bf16/AMX): OpenVINO f32 from a saved conversion 14.6 s, converting 36.8 s; NNCF int8
#: saved 7.4 s, converting and calibrating 76.8 s; the HF pipeline (torch float32, which re-encodes
#: the prompts per image) 27.9 s. torch bf16 from the AMX VM of ``select``'s docstring (10.7 s),
#: ONNX Runtime's dynamic int8 from its 12-15 images/s there. Each machine's own runs replace them.
PRIORS: dict[str, tuple[float, float, float]] = {
    "torch/float32": (4.0, 6.0, 6.0),
    "torch/bfloat16": (10.0, 6.0, 6.0),
    "openvino/float": (8.0, 3.0, 25.0),
    "openvino/int8": (14.0, 1.5, 70.0),
    "onnxruntime/int8": (12.0, 1.5, 60.0),
}

#: The same for BLIP's greedy captions (``images/s`` = photos captioned per second, 20 new tokens),
#: from issue 24 (torch float32 24 photos in 37.5 s whole process on the 2-core VNNI Xeon, about 0.7
#: photos/s once loaded; torch bf16 18.1 s on the AMX VM, about 1.8) and ``make bench`` on a quiet
#: 2-core AMD EPYC VM exposing AVX2 only (2026-12-07, full-size random-weight BLIP, 24 photos):
#: OpenVINO f32 from a saved conversion 57.5-62.8 s against torch float32's 43.6 s (the same tokens),
#: converting 30 s more. OpenVINO is slower there, so on the priors ``auto`` captions on PyTorch; a
#: machine where an OpenVINO caption run measured faster (its records) converts when the photos repay it.
CAPTION_PRIORS: dict[str, tuple[float, float, float]] = {
    "torch/float32": (0.7, 8.0, 8.0),
    "torch/bfloat16": (1.8, 8.0, 8.0),
    "openvino/float": (0.5, 10.0, 40.0),
}

NAMES = {"torch": "PyTorch", "openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}


@dataclass(frozen=True)
class Route:
    """One way to run a classify (or caption) run on this CPU.

    Attributes:
        backend: ``torch``, ``openvino`` or ``onnxruntime``.
        precision: ``float32`` / ``bfloat16`` (torch), ``float`` / ``int8`` (the runtimes).
        start_s: seconds before the first photo is encoded (model load; with a conversion when
            ``saved`` is False).
        images_per_s: steady images/s once started.
        saved: needs no conversion (torch, or a saved conversion of this model).
        recorded: ``start_s`` and ``images_per_s`` come from this machine's records (else ``PRIORS``).
    """

    backend: str
    precision: str
    start_s: float
    images_per_s: float
    saved: bool
    recorded: bool = False

    @property
    def path(self) -> str:
        """``<backend>/<precision>``, the key of ``hardware.speeds`` and ``PRIORS``."""
        return f"{self.backend}/{self.precision}"

    @property
    def int8(self) -> bool:
        """Whether the image tower runs int8."""
        return self.precision == "int8"

    @property
    def label(self) -> str:
        """``PyTorch float32``, ``OpenVINO int8``..."""
        return f"{NAMES[self.backend]} {self.precision}"

    def seconds(self, images: int) -> float:
        """Seconds this route takes for ``images`` photos: ``start_s + images / images_per_s``."""
        return self.start_s + images / self.images_per_s


def pace(record: Mapping[str, Any], priors: Mapping[str, tuple[float, float, float]] | None = None) -> float:
    """How fast this machine runs against the machine of ``PRIORS``: the geometric mean, over the
    paths it recorded images/s for, of recorded / prior images/s, at most 1.0 (1.0 without records).
    A missing figure is its prior scaled by it, so a slow (or busy) machine's measured PyTorch rate
    is not weighed against a fast machine's OpenVINO prior; a faster machine (or a smaller model)
    keeps the priors: a fast PyTorch run does not prove a conversion cheaper."""
    priors = PRIORS if priors is None else priors
    ratios = [float(r["images_per_s"]) / priors[p][0] for p, r in record.items()
              if p in priors and isinstance(r, dict) and (r.get("images_per_s") or 0) > 0]
    return min(1.0, float(math.prod(ratios) ** (1 / len(ratios)))) if ratios else 1.0


def route(path: str, saved: bool, record: Mapping[str, Any], scale: float = 1.0,
          priors: Mapping[str, tuple[float, float, float]] | None = None) -> Route:
    """The ``Route`` of ``path`` (``openvino/int8``...) from this machine's record of the model
    (``hardware.speeds.model_record``'s ``paths``), each missing figure from ``PRIORS`` at this
    machine's ``pace`` (``scale``: images/s times it, seconds divided by it); ``priors``: the run
    kind's (default ``PRIORS``, read at each call; ``CAPTION_PRIORS``)."""
    backend, precision = path.split("/")
    rate, load, convert = (PRIORS if priors is None else priors)[path]
    mine = record.get(path) or {}
    start = mine.get("load_s") if saved or backend == "torch" else mine.get("convert_s")
    return Route(backend, precision, float(start if start is not None else (load if saved else convert) / scale),
                 float(mine.get("images_per_s") or rate * scale), saved or backend == "torch",
                 recorded=bool(mine.get("images_per_s")) and start is not None)


def routes_for(torch_precision: str, runtimes: Sequence[str], saved: Mapping[str, bool],
               record: Mapping[str, Any], priors: Mapping[str, tuple[float, float, float]] | None = None) -> list[Route]:
    """A classify run's routes on this CPU: PyTorch at ``torch_precision`` and each of ``runtimes``
    (``openvino/float``, ``openvino/int8``, ``onnxruntime/int8``: what is installed and allowed),
    ``saved`` saying which of those have a saved conversion here; a caption run's with
    ``CAPTION_PRIORS``."""
    scale = pace(record, priors)
    return [route(f"torch/{torch_precision}", True, record, scale, priors)] + \
        [route(p, bool(saved.get(p)), record, scale, priors) for p in runtimes]


def choose(images: int, done: int, routes: Sequence[Route]) -> tuple[Route, str]:
    """The route for a run of ``images`` photos of a model that processed ``done`` photos on this
    machine before, and why (the rule in this module's docstring).

    Raises:
        ValueError: no route needs no conversion (``routes_for`` always gives PyTorch's).
    """
    ready = [r for r in routes if r.saved]
    if not ready:
        raise ValueError("no route starts without a conversion")
    now = min(ready, key=lambda r: r.seconds(images))
    work = images + done
    gains = [((work / now.images_per_s - work / r.images_per_s) - (r.start_s - now.start_s), r)
             for r in routes if not r.saved and r.images_per_s > now.images_per_s]
    gain, best = max(gains, key=lambda g: g[0], default=(0.0, None))
    if best is not None and gain > 0:
        return best, (f"{images} photos ({done} before on this machine) repay converting for {best.label} "
                      f"({_start(best, now)}; {best.images_per_s:.1f} images/s against {now.images_per_s:.1f})")
    why = f"{now.label} finishes {images} photos first"
    if gains:
        pay = max(gains, key=lambda g: g[0])[1]
        why += (f"; converting for {pay.label} repays from about {repay_photos(now, pay)} photos processed on "
                f"this machine ({done} so far)")
    return now, why


def repay_photos(now: Route, other: Route) -> int:
    """Photos after which ``other``'s faster rate has repaid its slower start against ``now``."""
    per_photo = 1 / now.images_per_s - 1 / other.images_per_s
    return int((other.start_s - now.start_s) / per_photo) + 1 if per_photo > 0 else 0


def _start(r: Route, now: Route) -> str:
    """The conversion's extra start: ``about 30 s more to start`` from this machine's records, else
    no number (``no conversion recorded here yet``): a number is announced only when measured here."""
    if r.recorded:
        return f"about {max(0.0, r.start_s - now.start_s):.0f} s more to start"
    return "no conversion recorded here yet"
