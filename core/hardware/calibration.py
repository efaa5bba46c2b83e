"""Does bfloat16 pay on this CPU? A measured answer, cached per machine and settings.

CPU flags say whether bf16 instructions exist, not whether they pay. A virtual machine may expose
AVX512-BF16 and hide AMX, and there bf16 autocast runs slower than float32; on another it runs
twice as fast. So ``--dtype auto`` on a CPU with native bf16 times the model's own kind of work
once — one ViT-B/16 encoder block (the shape of Chinese-CLIP's image tower, and of its BERT-base
text tower: hidden 768, MLP 3072, 12 heads) at the run's batch size, in float32 and under bf16
autocast exactly as the run would use it — and caches the ratio.

The cache is ``cpu-dtype.json`` in wwts' user cache folder (platformdirs' ``user_cache_dir``:
``$XDG_CACHE_HOME/wwts`` or ``~/.cache/wwts`` on Linux, ``~/Library/Caches/wwts`` on macOS,
``%LOCALAPPDATA%\\wwts\\Cache`` on Windows). Each entry is keyed by everything that decides the
answer: the CPU's full model name, a digest of its flags, the torch version, the thread count and
the batch size, so a VM image moved to another host, a torch upgrade or another ``--threads``
measures anew. ``wwts doctor --recalibrate`` measures again on demand; ``wwts doctor`` shows
when the value in use was measured.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from ..atomic import atomic_write

log = logging.getLogger(__name__)

#: Version of the cache file's layout; entries of other versions are ignored (measured again).
CACHE_VERSION = 2

#: ViT-B/16 at 224 px: 196 patches + the class token; hidden 768, MLP 3072, 12 heads (the
#: Chinese-CLIP ViT-B/16 vision config; BERT-base, its text tower, has the same block widths).
BLOCK_TOKENS, BLOCK_HIDDEN, BLOCK_MLP, BLOCK_HEADS = 197, 768, 3072, 12

#: The batch the calibration runs at is capped here: beyond it the per-token cost is flat on a CPU
#: and the measurement would only take longer.
MAX_CALIBRATION_BATCH = 8


def cache_file() -> Path:
    """``cpu-dtype.json`` in ``platformdirs.user_cache_dir("wwts")``: on Linux
    ``$XDG_CACHE_HOME/wwts/cpu-dtype.json`` (``~/.cache/wwts/cpu-dtype.json`` when unset).

    Read at each call, so a changed ``XDG_CACHE_HOME`` (the test suite's fixture) is honoured.
    """
    return Path(user_cache_dir("wwts", appauthor=False)) / "cpu-dtype.json"


def calibration_key(cpu_name: str, flags: frozenset[str], threads: int, batch_size: int) -> str:
    """The cache key: ``"<cpu name>|flags:<12 hex>|torch <version>|<n> threads|batch <b>"``."""
    digest = hashlib.sha1(" ".join(sorted(flags)).encode()).hexdigest()[:12]
    batch = max(1, min(batch_size, MAX_CALIBRATION_BATCH))
    return f"{cpu_name or 'unknown CPU'}|flags:{digest}|torch {torch_version()}|{threads} threads|batch {batch}"


def torch_version() -> str:
    """The installed torch's version (``2.13.0+cpu``): ``torch.__version__`` once torch is
    imported, else the installed distribution's metadata (the same string), so a torch-free run
    reads the same cache entry as a run that imported torch."""
    loaded = sys.modules.get("torch")
    if loaded is not None and getattr(loaded, "__version__", None):
        return str(loaded.__version__)
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _block() -> Any:
    """One pre-norm transformer encoder block as CLIP's ViT writes it (LayerNorm → attention with
    ``scaled_dot_product_attention`` → LayerNorm → Linear-GELU-Linear), random weights, in eval
    mode. Defined here so that reading the cache never imports torch."""
    import torch

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = torch.nn.LayerNorm(BLOCK_HIDDEN)
            self.qkv = torch.nn.Linear(BLOCK_HIDDEN, 3 * BLOCK_HIDDEN)
            self.proj = torch.nn.Linear(BLOCK_HIDDEN, BLOCK_HIDDEN)
            self.norm2 = torch.nn.LayerNorm(BLOCK_HIDDEN)
            self.fc1 = torch.nn.Linear(BLOCK_HIDDEN, BLOCK_MLP)
            self.fc2 = torch.nn.Linear(BLOCK_MLP, BLOCK_HIDDEN)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, 768)
            b, t, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, BLOCK_HEADS, -1).permute(2, 0, 3, 1, 4)
            attn = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            x = x + self.proj(attn.transpose(1, 2).reshape(b, t, BLOCK_HIDDEN))
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))

    return Block().eval()


def time_block(batch_size: int, rounds: int = 3) -> dict[str, float]:
    """Seconds for one forward of ``_block()`` on ``(batch, 197, 768)`` float32 input, best of
    ``rounds`` after one warm-up, in float32 and under CPU bf16 autocast (as ``dtype.autocast``
    runs the model). About 22 GFLOP at batch 8: 0.1-0.3 s per float32 pass on 2 cores.

    Returns:
        ``{"float32": seconds, "bfloat16": seconds}``.
    """
    import torch

    torch.manual_seed(0)
    block = _block()
    x = torch.randn(max(1, min(batch_size, MAX_CALIBRATION_BATCH)), BLOCK_TOKENS, BLOCK_HIDDEN)
    out = {}
    with torch.inference_mode():
        for name, ctx in (("float32", contextlib.nullcontext),
                          ("bfloat16", lambda: torch.autocast("cpu", dtype=torch.bfloat16))):
            best = float("inf")
            for i in range(rounds + 1):
                with ctx():
                    t0 = time.perf_counter()
                    block(x)
                    if i:  # the first pass sets up oneDNN primitives: not timed
                        best = min(best, time.perf_counter() - t0)
            out[name] = best
    return out


def _read_cache(path: Path) -> dict:
    with contextlib.suppress(Exception):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("version") == CACHE_VERSION and isinstance(data.get("entries"), dict):
            return data
    return {"version": CACHE_VERSION, "entries": {}}


def cached_entry(key: str) -> dict | None:
    """The stored measurement for ``key`` (``{"speedup", "measured", "float32_s", "bfloat16_s", ...}``)
    or ``None`` when this machine and settings were never measured."""
    entry = _read_cache(cache_file())["entries"].get(key)
    if isinstance(entry, dict) and isinstance(entry.get("speedup"), (int, float)) and entry["speedup"] > 0:
        return entry
    return None


def measure(key: str, batch_size: int) -> dict | None:
    """Time the block now (``time_block``), store the result under ``key`` and return the entry;
    ``None`` when the measurement failed (logged at debug level). The file is replaced atomically;
    failing to write it is not an error (the answer is still returned)."""
    try:
        times = time_block(batch_size)
        speedup = times["float32"] / times["bfloat16"]
    except Exception as exc:
        log.debug("bf16 calibration failed: %s", exc)
        return None
    entry = {"speedup": round(speedup, 3), "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "float32_s": round(times["float32"], 5), "bfloat16_s": round(times["bfloat16"], 5),
             "workload": f"ViT-B/16 block, batch {max(1, min(batch_size, MAX_CALIBRATION_BATCH))}"}
    path = cache_file()
    with contextlib.suppress(Exception):
        data = _read_cache(path)
        data["entries"][key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, [json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8")])
    return entry
