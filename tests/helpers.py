"""Helpers shared by several test modules: the CLI runner, generated image bytes, decoders that
the decode pool's worker processes import by name (so they live in an importable module), the
comparison of two classify runs' scores, and readers of what a run wrote (strict JSON, JSONL,
its one error line)."""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path

from PIL import Image

from wwts.core.input import load_image


def classify(*args):
    """``wwts classify ARGS...`` in-process through typer's ``CliRunner`` (paths may be ``Path``
    objects); returns click's ``Result``. The CLI is imported here, not at module level, so the
    decode worker processes that import ``crashing_load`` / ``pid_load`` stay light."""
    from typer.testing import CliRunner

    from wwts.cli.app import app

    return CliRunner().invoke(app, ["classify", *map(str, args)])


def noise_image(size=(400, 300)) -> Image.Image:
    """Photo-like content that compresses badly, so cutting a file short cuts the pixel data."""
    return Image.effect_noise(size, 64).convert("RGB")


def encoded(im: Image.Image, fmt: str, **kwargs) -> bytes:
    """``im`` saved in format ``fmt``, as bytes."""
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR (CRC fixed) claims ``width`` x ``height``: a bomb in 70 bytes."""
    data = bytearray(encoded(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def crashing_load(path, **kwargs):
    """Runs in the worker process: dies like a segfaulting native decoder on 'crash*' files."""
    if Path(path).name.startswith("crash"):
        os._exit(139)
    return load_image(path, **kwargs)


def pid_load(path, **kwargs):
    """Runs in the worker process: a slow decode that records which process did it."""
    time.sleep(0.3)
    decoded = load_image(path, **kwargs)
    decoded.note = str(os.getpid())
    return decoded


def top_k_scores(records) -> dict:
    """``{file name: {label: score}}`` of classify records' top-k (for comparing two runs)."""
    return {Path(r.path).name: {t.label: t.score for t in r.top_k} for r in records}


def assert_same_scores(a, b, tol: float) -> None:
    """Two runs' records name the same files and labels, with scores within ``tol``."""
    sa, sb = top_k_scores(a), top_k_scores(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].keys() == sb[name].keys()
        assert max(abs(sa[name][k] - sb[name][k]) for k in sa[name]) <= tol, name



def strict_json(data: bytes):
    """``json.loads`` as a strict parser does it: ``NaN`` / ``Infinity`` are errors."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(data.decode("utf-8"), parse_constant=refuse)


def strict_jsonl(path: Path) -> list[dict]:
    return [strict_json(line) for line in path.read_bytes().splitlines() if line.strip()]


def read_jsonl(path: Path) -> list[dict]:
    raw = path.read_bytes()
    raw.decode("utf-8")  # strict: the whole file is valid UTF-8
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def records_by_name(out: Path) -> dict[str, dict]:
    """Records of a ``.jsonl`` output by file name (each image has exactly one)."""
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    by_name = {Path(r["path"]).name: r for r in records}
    assert len(by_name) == len(records), "an image has two records"
    return by_name


#: Output formats by extension.
FORMATS = ["csv", "json", "jsonl"]
#: A file name from non-UTF-8 bytes, as os.fsdecode gives it on POSIX (lone surrogates).
BAD_NAME = b"/photos/\xff\xfe\xb0\xa1.jpg".decode("utf-8", "surrogateescape")
#: A run section as a classify run writes it.
RUN = {"task": "classify", "model": "OFA-Sys/chinese-clip-vit-base-patch16", "device": "cpu",
       "dtype": "bfloat16", "batch_size": 8, "labels": ["人", "车"], "prompt": "一张{}的照片。"}


def classify_records() -> list:
    """Records a writer must survive: non-UTF-8 and formula-like paths, quotes, errors."""
    from wwts.core.output import ClassifyResult, LabelScore

    return [
        ClassifyResult(path="/照片/猫 咪.jpg", width=640, height=480, label="人", score=0.912,
                       top_k=[LabelScore("人", 0.912), LabelScore("车", 0.051)]),
        ClassifyResult(path=BAD_NAME, width=10, height=20, label="车", score=0.75,
                       top_k=[LabelScore("车", 0.75), LabelScore("人", 0.25)]),
        ClassifyResult(path="/照片/坏.jpg", error="truncated: image file is truncated (3 bytes not processed)"),
        ClassifyResult(path="=cmd|' /C calc'!A0.jpg", width=1, height=1, label="-负号标签", score=0.5,
                       top_k=[LabelScore("-负号标签", 0.5), LabelScore("a:b;c", 0.5)]),
        ClassifyResult(path="C:\\udc80\\x5c\\'q.jpg", width=2, height=3, label="'引号", score=1.0,
                       top_k=[LabelScore("'引号", 1.0)]),
        ClassifyResult(path=f"/missing/{BAD_NAME[8:]}", error=f"not_found: no such file {BAD_NAME}"),
    ]


def invoke_with_deadline(args: list, seconds: float = 240):
    """``classify(*args)`` on a thread: a stall (a FIFO read...) fails the test instead of hanging it."""
    box: list = []
    worker = threading.Thread(target=lambda: box.append(classify(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"wwts classify stalled for {seconds} s"
    return box[0]


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def one_error_line(result) -> str:
    """The one ``error:`` line a failed command printed on stderr (and no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]
