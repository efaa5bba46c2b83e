"""Reliability end to end (issue 6): hostile files, Ctrl-C / SIGTERM, resume — no crash, no lost result.

Every test here goes through the command line: ``typer.testing.CliRunner`` on ``wwts.cli.app.app``
in-process, or a subprocess of the installed ``wwts`` script for the signal tests. The unit-level
behaviour of each part has its own tests (test_images.py, test_discover.py, test_writers.py,
test_decode.py); these check that the parts hold together: one record per image, a one-line
``category: message`` error for every bad file, exit code 3, nothing lost when the run is stopped.

The model is the session's tiny random Chinese-CLIP (``tiny_clip``). Its scores are near-uniform
but deterministic in float32, so "this file was decoded like that reference picture" is checked by
comparing the two records' scores (``same_scores``) instead of looking at label order.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import classify, encoded, noise_image, png_claiming
from wwts.core.engine import plan as engine, run as engine_run
from wwts.core.input.discover import IMAGE_EXTENSIONS, discover
from wwts.core.input.decode import AVIF_SUPPORTED, HEIF_SUPPORTED, SUPPORTED_FORMATS

WWTS = Path(sys.executable).with_name("wwts")
LABELS = "人,车,猫"
#: float32 and one torch thread: deterministic scores, and cheap on the 2-core test machine.
FAST = ("--labels", LABELS, "--top-k", "3", "--dtype", "float32", "--threads", "1")
#: Categories ``core.images`` / ``core.decode`` / the engine put in front of an error message.
CATEGORIES = {"not_found", "not_a_file", "permission", "empty", "unidentified", "truncated",
              "too_large", "decode", "crashed", "preprocess", "inference", "link", "aspect_ratio"}
ERROR_RE = re.compile(r"^([a-z_]+): \S.*$")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NON_UTF8_NAME = b"photo-\xff\xfe-\xe9t\xe9.png"  # Latin-1 bytes: not valid UTF-8


def read_jsonl(path: Path) -> list[dict]:
    raw = path.read_bytes()
    raw.decode("utf-8")  # strict: the whole file is valid UTF-8
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def scores(rec: dict) -> dict[str, float]:
    return {t["label"]: t["score"] for t in rec["top_k"]}


def score_gap(a: dict, b: dict) -> float:
    sa, sb = scores(a), scores(b)
    assert set(sa) == set(sb) == set(LABELS.split(","))
    return max(abs(sa[k] - sb[k]) for k in sa)


def same_scores(rec: dict, twin: dict, wrong: dict) -> None:
    """``rec`` was scored like ``twin`` (same pixels) and not like ``wrong`` (the bug's pixels)."""
    near, far = score_gap(rec, twin), score_gap(rec, wrong)
    assert near < 2e-6, f"{rec['path']} scored unlike {twin['path']} (gap {near:.2e})"
    assert far > 10 * max(near, 1e-6), f"cannot tell {twin['path']} from {wrong['path']} (gap {far:.2e})"


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


# --- generated hostile files ------------------------------------------------------------------------


def noise(size=(64, 48)) -> Image.Image:
    """``noise_image`` at this module's default size."""
    return noise_image(size)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A tiny JPEG whose SOF0 header claims ``width`` x ``height``."""
    data = bytearray(encoded(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_with_ascii_orientation() -> bytes:
    """A 40x20 JPEG whose EXIF Orientation tag is the string "abc": orientation cannot be read."""
    data = encoded(Image.new("RGB", (40, 20), (30, 120, 200)), "JPEG", quality=95)
    ifd = struct.pack(">H", 1) + struct.pack(">HHI", 0x0112, 2, 4) + b"abc\0" + b"\0\0\0\0"
    segment = b"Exif\0\0" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    app1 = b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment
    return data[:2] + app1 + data[2:]


def square(bg, fg, mode="RGB") -> Image.Image:
    im = Image.new(mode, (48, 48), bg)
    im.paste(fg, (12, 12, 36, 36))
    return im


def write_hostile_folder(folder: Path, exif_samples: Path | None) -> dict:
    """Every kind of hostile file of issue 6 in one folder tree; returns what each should give.

    Returns a dict with:
        errors: relative name → set of acceptable error categories;
        good: relative names that must get labels;
        either: relative names (real broken-camera samples) that may go either way;
        skipped: names that must not get a record (a folder and a FIFO named like images...);
        mutate: a function to call between discovery and decoding (files vanish or change).
    """
    folder.mkdir(parents=True)
    errors: dict[str, set[str]] = {}
    good: set[str] = set()
    either: set[str] = set()
    skipped: set[str] = set()

    def put(name: str, data: bytes, expect: set[str] | None = None) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        if expect is None:
            good.add(name)
        else:
            errors[name] = expect

    # ordinary photos, also under a CJK name, a name with a line break and a non-UTF-8 name
    put("good.jpg", encoded(noise(), "JPEG"))
    put("good.png", encoded(noise(), "PNG"))
    put("猫咪照片 2024.jpg", encoded(noise(), "JPEG"))
    put("line\nbreak.png", encoded(noise(), "PNG"))
    with open(os.path.join(os.fsencode(folder), NON_UTF8_NAME), "wb") as fh:
        fh.write(encoded(noise(), "PNG"))
    good.add(os.fsdecode(NON_UTF8_NAME))

    # not images at all
    put("empty.jpg", b"", {"empty"})
    put("page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", {"unidentified"})
    put("notes.png", "只是一些文字, just text\n".encode("utf-8") * 20, {"unidentified"})
    put("icon.jpg", encoded(Image.new("RGB", (16, 16)), "ICO"), {"unidentified"})  # not on the format list
    # truncated, corrupt
    jpg, png = encoded(noise((400, 300)), "JPEG"), encoded(noise((400, 300)), "PNG")
    put("cut.jpg", jpg[: len(jpg) // 2], {"truncated"})
    put("cut.png", png[: len(png) // 2], {"truncated"})
    broken = bytearray(encoded(Image.new("RGB", (64, 64), "red"), "PNG"))
    idat = broken.find(b"IDAT")
    broken[idat + 10:idat + 20] = bytes(10)
    put("broken.png", bytes(broken), {"decode"})
    # decompression bombs / huge dimensions in tiny files, refused from the header
    put("bomb.png", png_claiming(30_000, 30_000), {"too_large"})
    put("bomb.jpg", jpeg_claiming(65_000, 65_000), {"too_large"})
    side = int(Image.MAX_IMAGE_PIXELS ** 0.5) + 10  # over the limit, under Pillow's hard 2x limit
    put("big.png", png_claiming(side, side), {"too_large"})

    # modes that need care; each has a reference picture with the pixels it must turn into
    put("ref/gradient.png", encoded(Image.linear_gradient("L").resize((48, 48)), "PNG"))
    put("ref/white.png", encoded(Image.new("RGB", (48, 48), "white"), "PNG"))
    put("ref/red.png", encoded(Image.new("RGB", (48, 48), "red"), "PNG"))
    put("ref/green.png", encoded(Image.new("RGB", (48, 48), (0, 255, 0)), "PNG"))
    put("ref/red_on_white.png", encoded(square("white", (255, 0, 0)), "PNG"))
    put("ref/red_on_black.png", encoded(square("black", (255, 0, 0)), "PNG"))
    put("ref/black_on_white.png", encoded(square("white", (0, 0, 0)), "PNG"))
    put("ref/black.png", encoded(Image.new("RGB", (48, 48), "black"), "PNG"))
    grey = Image.linear_gradient("L").resize((48, 48))
    put("modes/grey16.png", encoded(Image.frombytes(
        "I;16", grey.size, b"".join(struct.pack("<H", v * 256) for v in grey.tobytes())), "PNG"))
    put("modes/rgba.png", encoded(square((0, 0, 0, 0), (255, 0, 0, 255), "RGBA"), "PNG"))
    put("modes/la.png", encoded(square((0, 0), (0, 255), "LA"), "PNG"))
    pal = Image.new("P", (48, 48), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (12, 12, 36, 36))
    put("modes/palette_transparent.png", encoded(pal, "PNG", transparency=0))
    put("modes/cmyk.jpg", encoded(Image.new("CMYK", (48, 48), (0, 255, 255, 0)), "JPEG"))
    frames = [Image.new("RGB", (48, 48), c) for c in ("red", (0, 255, 0), "blue")]
    put("modes/anim.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80))
    if "WEBP" in SUPPORTED_FORMATS:
        put("modes/anim.webp", encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                                       duration=80, lossless=True))
    if AVIF_SUPPORTED:
        put("modes/photo.avif", encoded(noise(), "AVIF"))
    if HEIF_SUPPORTED:
        put("modes/photo.heic", encoded(noise(), "HEIF"))
    put("exif/orientation_unreadable.jpg", jpeg_with_ascii_orientation())

    # things named like images that are not files: never a record, never a hang
    (folder / "x.jpg").mkdir()
    (folder / "x.jpg" / "inside.png").write_bytes(encoded(noise(), "PNG"))  # a real image in it
    good.add("x.jpg/inside.png")
    skipped.add("x.jpg")
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.jpg")
        skipped.add("pipe.jpg")
    os.symlink(".", folder / "loop")  # a folder link loop: not followed without --follow-symlinks
    os.symlink(folder / "missing.jpg", folder / "dangling.jpg")
    errors["dangling.jpg"] = {"link"}  # issue 10: every broken link named like an image gets a record
    skipped.add("loop")
    if not IS_ROOT:
        put("unreadable.png", encoded(noise(), "PNG"), {"permission"})
        (folder / "unreadable.png").chmod(0)

    # files that vanish or change between discovery and decoding
    put("race/vanish.jpg", encoded(noise(), "JPEG"), {"not_found"})
    put("race/emptied.png", encoded(noise(), "PNG"), {"empty"})
    put("race/became_fifo.jpg", encoded(noise(), "JPEG"), {"not_a_file"} if hasattr(os, "mkfifo") else None)
    put("race/became_html.png", encoded(noise(), "PNG"), {"unidentified"})

    def mutate() -> None:
        (folder / "race/vanish.jpg").unlink()
        (folder / "race/emptied.png").write_bytes(b"")
        if hasattr(os, "mkfifo"):
            (folder / "race/became_fifo.jpg").unlink()
            os.mkfifo(folder / "race/became_fifo.jpg")
        (folder / "race/became_html.png").write_text("<html>moved</html>", encoding="utf-8")

    # real files that break EXIF readers or decoders, and real HEIC/HEIF phone photos
    if exif_samples is not None:
        parts = [exif_samples / "jpg" / "corrupted.jpg", exif_samples / "jpg" / "invalid",
                 exif_samples / "jpg" / "tests", exif_samples / "heic"]
        for src in parts:
            if not src.exists():
                continue
            dest = folder / "samples" / src.relative_to(exif_samples)
            if src.is_dir():
                shutil.copytree(src, dest)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dest)
        for p in (folder / "samples").rglob("*"):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                rel = str(p.relative_to(folder))
                (good if p.suffix.lower() in (".heic", ".heif") else either).add(rel)
    return {"errors": errors, "good": good, "either": either, "skipped": skipped, "mutate": mutate}


def invoke_with_deadline(args: list, seconds: float = 240):
    """``classify(*args)`` on a thread: a stall (a FIFO read...) fails the test instead of hanging it."""
    box: list = []
    worker = threading.Thread(target=lambda: box.append(classify(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"wwts classify stalled for {seconds} s"
    return box[0]


# --- the hostile folder -----------------------------------------------------------------------------


@contextlib.contextmanager
def captured_fds(path: Path):
    """Send this process's fds 1 and 2 to ``path`` (what a spawned decode worker prints lands there)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def run_hostile(tiny_clip: Path, tmp: Path, samples: Path | None):
    """``wwts classify`` on a fresh hostile folder, files racing between discovery and decoding.

    Returns (CliRunner result, records by name relative to the folder, the folder's spec, out file).
    """
    folder = tmp / "hostile"
    spec = write_hostile_folder(folder, samples)
    real_find = engine.find_images

    def find_then_race(config):
        paths = real_find(config)
        spec["mutate"]()
        return paths

    out = tmp / "x.jsonl"
    with pytest.MonkeyPatch.context() as mp, captured_fds(tmp / "fds.txt"):
        mp.setattr(engine, "find_images", find_then_race)
        mp.setenv("HF_HOME", str(tmp / "hf-home"))  # module-scoped: the autouse isolation is not on yet
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = invoke_with_deadline([folder, *FAST, "--model", tiny_clip, "--out", out, "-b", "4"])
    no_traceback(result.output, (tmp / "fds.txt").read_text(encoding="utf-8", errors="replace"))
    assert out.exists(), result.output
    records = read_jsonl(out)
    by_name = {os.path.relpath(r["path"], folder): r for r in records}
    assert len(by_name) == len(records), "an image has two records"
    return result, by_name, spec, out


@pytest.fixture(scope="module")
def hostile(tiny_clip, tmp_path_factory):
    """One run on the generated hostile folder, shared by the tests that look at its records."""
    return run_hostile(tiny_clip, tmp_path_factory.mktemp("hostile"), None)


def check_records(result, records: dict, spec: dict) -> None:
    """Exit 3, one record per image file, one-line ``category: message`` errors, labels otherwise."""
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert set(records) == set(spec["errors"]) | spec["good"] | spec["either"]
    assert not set(records) & spec["skipped"]
    for name, rec in records.items():
        if rec["error"]:
            assert "\n" not in rec["error"] and "\r" not in rec["error"], rec["error"]
            m = ERROR_RE.match(rec["error"])
            assert m and m.group(1) in CATEGORIES, f"{name}: {rec['error']!r}"
            assert rec["label"] is None and rec["top_k"] == []
        else:
            assert rec["label"] and len(rec["top_k"]) == 3, name
            assert rec["width"] and rec["height"], name
            assert abs(sum(t["score"] for t in rec["top_k"]) - 1) < 1e-4
    for name, allowed in spec["errors"].items():
        err = records[name]["error"]
        assert err and err.split(":", 1)[0] in allowed, f"{name}: {err!r}, expected {allowed}"
    for name in spec["good"]:
        assert records[name]["error"] is None, f"{name}: {records[name]['error']}"
    # the summary counts the errors; exit code 3 says "finished, some images failed"
    n_err = sum(1 for r in records.values() if r["error"])
    assert f"{len(records)} images, {n_err} errors" in result.stderr


@pytest.mark.slow
def test_hostile_folder_one_record_each_and_exit_3(hostile):
    result, records, spec, _ = hostile
    check_records(result, records, spec)


@pytest.mark.slow
def test_hostile_folder_names_round_trip_as_utf8(hostile):
    _, records, _, out = hostile
    out.read_bytes().decode("utf-8")  # strict
    rec = records[os.fsdecode(NON_UTF8_NAME)]
    assert os.fsencode(rec["path"]).endswith(NON_UTF8_NAME)  # the exact bytes come back
    assert Path(rec["path"]).is_file() and rec["label"]
    for name in ("猫咪照片 2024.jpg", "line\nbreak.png"):
        assert Path(records[name]["path"]).is_file() and records[name]["label"]


@pytest.mark.slow
def test_hostile_folder_modes_decode_to_the_right_pixels(hostile):
    """16-bit scaled (not white), transparency on white (not black), first frame of animations."""
    _, r, _, _ = hostile
    same_scores(r["modes/grey16.png"], r["ref/gradient.png"], wrong=r["ref/white.png"])
    same_scores(r["modes/rgba.png"], r["ref/red_on_white.png"], wrong=r["ref/red_on_black.png"])
    same_scores(r["modes/palette_transparent.png"], r["ref/red_on_white.png"], wrong=r["ref/red_on_black.png"])
    same_scores(r["modes/la.png"], r["ref/black_on_white.png"], wrong=r["ref/black.png"])
    same_scores(r["modes/anim.gif"], r["ref/red.png"], wrong=r["ref/green.png"])
    if "modes/anim.webp" in r:
        same_scores(r["modes/anim.webp"], r["ref/red.png"], wrong=r["ref/green.png"])
    assert r["modes/cmyk.jpg"]["label"] and (r["modes/cmyk.jpg"]["width"], r["modes/cmyk.jpg"]["height"]) == (48, 48)
    for name in ("modes/photo.avif", "modes/photo.heic"):
        if name in r:
            assert r[name]["label"] and (r[name]["width"], r[name]["height"]) == (64, 48)
    # EXIF orientation that cannot be read: the image is used as stored (unrotated)
    rec = r["exif/orientation_unreadable.jpg"]
    assert rec["label"] and (rec["width"], rec["height"]) == (40, 20)


@pytest.mark.slow
def test_hostile_folder_records_frame_count_and_notes(hostile):
    _, r, _, _ = hostile
    assert r["modes/anim.gif"]["frames"] == 3
    if "modes/anim.webp" in r:
        assert r["modes/anim.webp"]["frames"] == 3
    assert r["good.png"]["frames"] is None and r["good.png"]["note"] is None
    note = r["exif/orientation_unreadable.jpg"]["note"]
    assert "orientation" in note and "unrotated" in note and "\n" not in note


@pytest.mark.slow
def test_hostile_folder_with_real_broken_and_heic_samples(tiny_clip, tmp_path, exif_samples):
    result, records, spec, _ = run_hostile(tiny_clip, tmp_path, exif_samples)
    assert spec["either"], "no broken samples were copied"
    check_records(result, records, spec)
    # HEIC/HEIF: decoded through pillow-heif and rotated once: the record has the displayed size
    heics = [n for n in records if n.startswith("samples/") and n.lower().endswith((".heic", ".heif"))]
    if HEIF_SUPPORTED and (exif_samples / "heic").is_dir():
        assert heics
    import pillow_heif

    for name in heics:
        shown = pillow_heif.open_heif(Path(records[name]["path"])).size  # irot/imir applied
        assert (records[name]["width"], records[name]["height"]) == shown, name


def test_follow_symlinks_detects_loops_and_stays_inside_the_root(tiny_clip, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    for p in (root / "a.png", root / "sub" / "b.png", outside / "c.png"):
        p.write_bytes(encoded(noise((32, 32)), "PNG"))
    os.symlink(root, root / "loop")
    os.symlink("..", root / "sub" / "up")
    os.symlink(outside, root / "sub" / "elsewhere")
    for flag in ((), ("--follow-symlinks",)):
        out = tmp_path / f"r{len(flag)}.jsonl"
        result = invoke_with_deadline([root, *FAST, "--model", tiny_clip, "--out", out, *flag], 120)
        assert result.exit_code == 0, result.output
        names = [os.path.relpath(r["path"], root) for r in read_jsonl(out)]
        assert sorted(names) == ["a.png", "sub/b.png"], (flag, names)


def test_a_crashing_decoder_costs_one_record(tiny_clip, tmp_path, monkeypatch, capfd):
    """HEIF/AVIF decode in a worker process: when native code kills it, the run goes on."""
    from tests.helpers import crashing_load  # importable by name in the spawned worker

    if not HEIF_SUPPORTED:
        pytest.skip("no HEIF support: .heic files are not picked up")
    monkeypatch.setattr(engine_run, "DecodePool", functools.partial(engine_run.DecodePool, isolated_load=crashing_load))
    folder = tmp_path / "phone"
    folder.mkdir()
    for name in ("a.heic", "crash.heic", "z.heic", "plain.png"):
        Image.new("RGB", (40, 20), (200, 30, 30)).save(folder / name, format="PNG")  # PNG inside
    out = tmp_path / "r.jsonl"
    result = invoke_with_deadline([folder, *FAST, "--model", tiny_clip, "--out", out], 180)
    no_traceback(result.output, *capfd.readouterr())
    assert result.exit_code == 3, result.output
    records = {Path(r["path"]).name: r for r in read_jsonl(out)}
    assert sorted(records) == ["a.heic", "crash.heic", "plain.png", "z.heic"]
    assert records["crash.heic"]["error"].startswith("crashed: ")
    assert all(records[n]["label"] for n in ("a.heic", "z.heic", "plain.png"))


def test_a_multi_line_decoder_message_becomes_a_one_line_error(tiny_clip, tmp_path, monkeypatch):
    """Some library messages span lines (multiprocessing's, for one); the record's error must not."""
    from wwts.core.input import pixels

    real = pixels.to_rgb

    def to_rgb(im):
        if im.size == (33, 33):
            raise ValueError("cannot convert this one\n    detail on a second line\n")
        return real(im)

    monkeypatch.setattr(pixels, "to_rgb", to_rgb)
    folder = tmp_path / "imgs"
    folder.mkdir()
    noise((33, 33)).save(folder / "odd.png")
    noise((32, 32)).save(folder / "fine.png")
    out = tmp_path / "r.jsonl"
    result = classify(folder, *FAST, "--model", tiny_clip, "--out", out)
    assert result.exit_code == 3, result.output
    records = {Path(r["path"]).name: r for r in read_jsonl(out)}
    assert records["odd.png"]["error"] == "decode: ValueError: cannot convert this one detail on a second line"
    assert records["fine.png"]["label"]


# --- options of the hostile-file kind ---------------------------------------------------------------


def test_max_pixels_small_gives_too_large_records(tiny_clip, tmp_path, monkeypatch):
    # the CLI sets Pillow's process-wide limit from --max-pixels; put it back after this test
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (20, 20), "red").save(folder / "small.png")  # 400 pixels
    Image.new("RGB", (100, 80), "blue").save(folder / "large.png")  # 8000 pixels
    noise((60, 40)).save(folder / "large.jpg")  # 2400 pixels
    out = tmp_path / "r.jsonl"
    result = classify(folder, *FAST, "--model", tiny_clip, "--out", out, "--max-pixels", "1000")
    assert result.exit_code == 3, result.output
    records = {Path(r["path"]).name: r for r in read_jsonl(out)}
    assert records["small.png"]["label"] and records["small.png"]["error"] is None
    for name in ("large.png", "large.jpg"):
        assert records[name]["error"].startswith("too_large: "), records[name]
        assert "1000" in records[name]["error"]


def test_max_pixels_above_pillows_limit_lets_a_big_header_through(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    side = int(Image.MAX_IMAGE_PIXELS ** 0.5) + 10
    big = tmp_path / "big.png"
    big.write_bytes(png_claiming(side, side))  # header only: the decoder then finds no pixels
    out = tmp_path / "r.jsonl"
    result = classify(big, *FAST, "--model", tiny_clip, "--out", out)
    assert result.exit_code == 3
    assert read_jsonl(out)[0]["error"].startswith("too_large: ")
    result = classify(big, *FAST, "--model", tiny_clip, "--out", out, "--overwrite",
                      "--max-pixels", str(side * side))
    assert result.exit_code == 3
    assert read_jsonl(out)[0]["error"].startswith("truncated: ")  # got past the pixel limit


def test_allow_truncated_gives_truncated_files_a_label(tiny_clip, tmp_path):
    folder = tmp_path / "cut"
    folder.mkdir()
    for fmt in ("JPEG", "PNG"):
        data = encoded(noise((400, 300)), fmt)
        (folder / f"cut.{fmt.lower()}").write_bytes(data[: len(data) // 2])
    out = tmp_path / "r.jsonl"
    result = classify(folder, *FAST, "--model", tiny_clip, "--out", out)
    assert result.exit_code == 3, result.output
    assert all(r["error"].startswith("truncated: ") for r in read_jsonl(out))
    result = classify(folder, *FAST, "--model", tiny_clip, "--out", out, "--overwrite", "--allow-truncated")
    assert result.exit_code == 0, result.output
    records = read_jsonl(out)
    assert len(records) == 2
    for rec in records:
        assert rec["error"] is None and rec["label"]
        assert (rec["width"], rec["height"]) == (400, 300)


# --- results are never lost: signals ----------------------------------------------------------------


def many_pngs(folder: Path, n: int, avif_every: int = 0) -> list[str]:
    """``n`` small distinct images (every ``avif_every``-th an AVIF: decoded in the worker process)."""
    folder.mkdir(parents=True)
    names = []
    for i in range(n):
        im = Image.new("RGB", (32, 24), (i % 256, (7 * i) % 256, (13 * i) % 256))
        if avif_every and AVIF_SUPPORTED and i % avif_every == 0:  # the first one too: the worker
            # process is running (and past its start-up) by the time the first result is written
            name = f"img_{i:04d}.avif"
            im.save(folder / name, "AVIF")
        else:
            name = f"img_{i:04d}.png"
            im.save(folder / name)
        names.append(name)
    return names


class Wwts:
    """``wwts classify ...`` in its own process group (a terminal's Ctrl-C reaches the whole group).

    stdout/stderr go to files, not pipes: a decode worker that outlives the run would hold a pipe
    open and hang the test. Leaving the ``with`` block kills whatever is left of the group.
    """

    def __init__(self, args: list, cwd: Path) -> None:
        self.cwd = cwd
        self._out, self._err = open(cwd / "wwts.stdout", "w+b"), open(cwd / "wwts.stderr", "w+b")
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(cwd / "hf-home"))
        # float32 pinned: the same work on every CPU, and no bf16 calibration in the child process
        self.proc = subprocess.Popen([str(WWTS), "classify", *map(str, args), "--dtype", "float32"], cwd=cwd, stdout=self._out,
                                     stderr=self._err, start_new_session=True, env=env)
        self.pgid = self.proc.pid

    def __enter__(self) -> "Wwts":
        return self

    def __exit__(self, *exc) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._out.close()
        self._err.close()

    def wait(self, timeout: float = 120) -> tuple[str, str]:
        """Wait for the wwts process itself; its (stdout, stderr)."""
        self.proc.wait(timeout)
        return ((self.cwd / "wwts.stdout").read_bytes().decode("utf-8"),
                (self.cwd / "wwts.stderr").read_bytes().decode("utf-8"))

    def wait_for_lines(self, path: Path, n: int = 1, timeout: float = 120) -> None:
        """Poll ``path`` until it holds ``n`` complete lines (the run is producing results)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_bytes().count(b"\n") >= n:
                return
            if self.proc.poll() is not None:
                out, err = self.wait()
                pytest.fail(f"wwts ended (rc {self.proc.returncode}) before writing results:\n{out}{err}")
            time.sleep(0.005)
        pytest.fail(f"no result line in {path} after {timeout} s")

    def group_is_gone(self, timeout: float = 10) -> bool:
        """True once no process of the group is left (decode workers did not outlive the run)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.pgid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False


def resume_line(stderr: str) -> list[str]:
    """The printed command that finishes the run, with ``wwts`` replaced by this venv's script."""
    lines = [line for line in stderr.splitlines() if "to finish the run:" in line]
    assert len(lines) == 1, stderr
    argv = shlex.split(lines[0].split("to finish the run:", 1)[1])
    assert argv[0] == "wwts" and "--resume" in argv, argv
    return [str(WWTS), *argv[1:]]


def _interrupt_then_resume(tiny_clip, tmp_path, sig: int, out_name: str, expected_rc: int) -> None:
    names = many_pngs(tmp_path / "imgs", 400, avif_every=25)
    out = tmp_path / out_name
    watch = out if out.suffix == ".jsonl" else out.with_name(out.name + ".partial.jsonl")
    with Wwts(["imgs", *FAST, "--model", tiny_clip, "--out", out_name, "--batch-size", "2",
               "--workers", "1"], cwd=tmp_path) as wwts:
        wwts.wait_for_lines(watch)
        if sig == signal.SIGINT:
            os.killpg(wwts.pgid, sig)  # like Ctrl-C in a terminal: the decode worker gets it too
        else:
            wwts.proc.send_signal(sig)  # like `kill PID`
        stdout, stderr = wwts.wait()
        assert wwts.proc.returncode == expected_rc, stderr
        no_traceback(stdout, stderr)
        assert wwts.group_is_gone(), "a decode worker outlived the interrupted run"
    assert "interrupted" in stderr
    if out.suffix == ".json":
        # the records so far are published as one valid JSON document; no partial file is left
        doc = json.loads(out.read_bytes().decode("utf-8"))
        done = doc["results"]
        assert doc["run"]["labels"] == LABELS.split(",") and not watch.exists()
    else:
        done = read_jsonl(out)  # every line parses: whole batches were flushed
    assert 0 < len(done) < len(names)
    assert all(r["label"] for r in done)

    resumed = subprocess.run(resume_line(stderr), cwd=tmp_path, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()
    no_traceback(resumed.stdout.decode(), resumed.stderr.decode())
    if out.suffix == ".json":
        doc = json.loads(out.read_text(encoding="utf-8"))
        records = doc["results"]
        assert not watch.exists()
    else:
        records = read_jsonl(out)
    paths = [r["path"] for r in records]
    assert sorted(paths) == sorted(f"imgs/{n}" for n in names)  # each image exactly once
    assert all(r["label"] for r in records)
    assert [r["path"] for r in records[: len(done)]] == [r["path"] for r in done]  # kept, not redone


@pytest.mark.slow
def test_sigint_stops_flushes_prints_resume_command_and_resume_finishes(tiny_clip, tmp_path):
    _interrupt_then_resume(tiny_clip, tmp_path, signal.SIGINT, "r.jsonl", 130)


@pytest.mark.slow
def test_sigterm_saves_valid_json_and_resume_completes_it(tiny_clip, tmp_path):
    _interrupt_then_resume(tiny_clip, tmp_path, signal.SIGTERM, "r.json", 143)


@pytest.fixture(scope="module")
def second_sigint(tiny_clip, tmp_path_factory):
    """A run stopped by two Ctrl-C 0.2 s apart while its second batch is in flight.

    Yields (the ``Wwts`` process, stdout, stderr, the output file, its bytes at the first signal).
    """
    tmp_path = tmp_path_factory.mktemp("second-sigint")
    folder = tmp_path / "imgs"
    folder.mkdir()
    # 27-megapixel PNGs of under 100 KB: slow to decode (about 0.2 s each here), so a batch of 16
    # on one decode thread takes about 3 s, far longer than the gap between the two signals
    slow = encoded(Image.linear_gradient("L").resize((6000, 4500)).convert("RGB"), "PNG")
    for i in range(80):
        (folder / f"g{i:03d}.png").write_bytes(slow)
    if AVIF_SUPPORTED:  # decoded first, in the worker process
        noise().save(folder / "a.avif", "AVIF")
    out = tmp_path / "r.jsonl"
    # --no-store: the 80 files have the same bytes, and the embedding store would decode only one
    with Wwts(["imgs", *FAST, "--model", tiny_clip, "--out", "r.jsonl", "--batch-size", "16",
               "--workers", "1", "--no-store"], cwd=tmp_path) as wwts:
        wwts.wait_for_lines(out)
        # the first batch is written; let the second one get under way (a signal that lands between
        # two batches stops the run at once, with nothing in flight to wait for)
        time.sleep(0.5)
        at_signal = out.read_bytes()
        os.killpg(wwts.pgid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(wwts.pgid, signal.SIGINT)
        t0 = time.monotonic()
        stdout, stderr = wwts.wait(60)
        print(f"second SIGINT: exited {time.monotonic() - t0:.2f} s after it")
        yield wwts, stdout, stderr, out, at_signal


@pytest.mark.slow
def test_second_sigint_exits_at_once(second_sigint):
    """The first Ctrl-C waits for the batch in flight; a second one does not wait for anything."""
    wwts, stdout, stderr, out, at_signal = second_sigint
    assert wwts.proc.returncode == 130, (wwts.proc.returncode, stderr)
    no_traceback(stdout, stderr)
    assert "done:" not in stderr  # it did not finish the batch and print the summary first
    assert out.read_bytes() == at_signal  # what was flushed stays; nothing half-written after it
    # only the batches finished before the first signal were written (one, or under load two: the
    # decode thread runs ahead while the model works), not the one in flight nor any after it
    written = len(read_jsonl(out))
    assert written % 16 == 0 and 16 <= written < 81, written


def test_after_the_first_signal_the_handler_stays_until_the_process_ends():
    """The run may end on its own between two Ctrl-C (the batch in flight was quick); the second
    one must still exit at once, not raise KeyboardInterrupt into the summary or the shutdown."""
    from wwts.cli.run import Interrupts as _Interrupts

    class FakeRun:
        stopped = False

        def stop(self):
            self.stopped = True

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _Interrupts(FakeRun()) as quiet_run:
            pass
        assert quiet_run.signum is None
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]  # no signal: old handlers back
        run = FakeRun()
        with _Interrupts(run) as interrupts:
            interrupts._handle(signal.SIGINT, None)
        assert run.stopped and interrupts.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) == interrupts._handle
        assert signal.getsignal(signal.SIGTERM) == interrupts._handle
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.slow
@pytest.mark.skipif(not AVIF_SUPPORTED, reason="no AVIF: no decode worker process to outlive the run")
def test_second_sigint_leaves_no_decode_worker_behind(second_sigint):
    wwts = second_sigint[0]
    assert wwts.group_is_gone(5), "the decode worker outlived the run"


# --- results are never lost: resume / retry / refusing to overwrite -----------------------------------


@pytest.fixture
def six_images(tmp_path) -> Path:
    folder = tmp_path / "six"
    folder.mkdir()
    for i in range(6):
        noise((40 + i, 30)).save(folder / f"p{i}.png")
    return folder


def test_resume_after_a_torn_last_line(tiny_clip, six_images, tmp_path):
    out = tmp_path / "r.jsonl"
    assert classify(six_images, *FAST, "--model", tiny_clip, "--out", out).exit_code == 0
    raw = out.read_bytes()
    lines = raw.splitlines(keepends=True)
    torn = b"".join(lines[:4]) + lines[4][: len(lines[4]) // 2]  # record 5 half-written, 6 missing
    out.write_bytes(torn)
    result = classify(six_images, *FAST, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    after = out.read_bytes()
    assert after.startswith(b"".join(lines[:4]))  # records already done are kept as they were
    records = read_jsonl(out)
    assert sorted(Path(r["path"]).name for r in records) == [f"p{i}.png" for i in range(6)]
    assert all(r["label"] and r["error"] is None for r in records)
    # nothing left to do: a second --resume changes nothing
    result = classify(six_images, *FAST, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 0 and "nothing to do" in result.stderr
    assert out.read_bytes() == after


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_retry_failed_reprocesses_only_the_broken_image(tiny_clip, six_images, tmp_path, fmt):
    broken = six_images / "p3.png"
    good_bytes = broken.read_bytes()
    broken.write_bytes(good_bytes[: len(good_bytes) // 3])
    out = tmp_path / f"r.{fmt}"
    result = classify(six_images, *FAST, "--model", tiny_clip, "--out", out)
    assert result.exit_code == 3, result.output
    before = read_records(out)
    assert [Path(r["path"]).name for r in before if r["error"]] == ["p3.png"]
    broken.write_bytes(good_bytes)  # the user fixed the file
    result = classify(six_images, *FAST, "--model", tiny_clip, "--out", out, "--retry-failed")
    assert result.exit_code == 0, result.output
    after = read_records(out)
    by_name = {Path(r["path"]).name: r for r in after}
    assert len(after) == 6 and sorted(by_name) == [f"p{i}.png" for i in range(6)]
    assert by_name["p3.png"]["error"] in (None, "") and by_name["p3.png"]["label"]
    # the others were not processed again: their records are unchanged
    old = {Path(r["path"]).name: r for r in before}
    for name in by_name.keys() - {"p3.png"}:
        assert by_name[name] == old[name]


def read_records(out: Path) -> list[dict]:
    if out.suffix == ".jsonl":
        return read_jsonl(out)
    if out.suffix == ".json":
        return json.loads(out.read_text(encoding="utf-8"))["results"]
    import csv

    return list(csv.DictReader(out.read_text(encoding="utf-8-sig").splitlines()))


@pytest.mark.parametrize("change", [
    ("--labels", "人,车,狗"),
    ("--prompt", "{}"),
    ("--dtype", "bfloat16"),
    ("--model", "COPY"),
    ("--quantize", "int8"),
    ("--backend", "onnxruntime"),
], ids=["labels", "prompt", "dtype", "model", "quantize", "backend"])
def test_resume_with_other_settings_is_refused(tiny_clip, six_images, tmp_path, change):
    out = tmp_path / "r.jsonl"
    assert classify(six_images, *FAST, "--model", tiny_clip, "--out", out).exit_code == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3]))  # an interrupted run: 3 of 6 done
    before = out.read_bytes()
    args = dict(zip(FAST[::2], FAST[1::2]), **{"--model": str(tiny_clip)})
    key, value = change
    if value == "COPY":
        value = str(shutil.copytree(tiny_clip, tmp_path / "other-model"))
    args[key] = value
    result = classify(six_images, *[x for kv in args.items() for x in kv], "--out", out, "--resume")
    assert result.exit_code == 2, result.output
    assert key.lstrip("-") in result.stderr and "other settings" in result.stderr
    assert out.read_bytes() == before
    no_traceback(result.output)


def test_resume_of_a_finished_run_with_other_labels_is_refused(tiny_clip, six_images, tmp_path):
    out = tmp_path / "r.jsonl"
    assert classify(six_images, *FAST, "--model", tiny_clip, "--out", out).exit_code == 0
    result = classify(six_images, *FAST[2:], "--labels", "人,车,狗", "--model", tiny_clip,
                      "--out", out, "--resume")
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("flags", [(), ("--overwrite",)], ids=["plain", "overwrite"])
def test_out_that_is_an_input_image_is_refused(tiny_clip, tmp_path, flags):
    photo = tmp_path / "photo.jpg"
    noise().save(photo, "JPEG")
    disguised = tmp_path / "photo.jsonl"  # a real image under an output's name, given as input
    noise().save(disguised, "PNG")
    before = {p: p.read_bytes() for p in (photo, disguised)}
    result = classify(photo, *FAST, "--model", tiny_clip, "--out", photo, *flags)
    assert result.exit_code == 2, result.output
    result = classify(photo, disguised, *FAST, "--model", tiny_clip, "--out", disguised, *flags)
    assert result.exit_code == 2, result.output
    assert "is one of the input images" in result.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_csv_cells_cannot_run_as_formulas(tiny_clip, tmp_path, monkeypatch):
    import csv

    from wwts.core.output.records import ClassifyResult
    from wwts.core.output import read_existing

    folder = tmp_path / "csv"
    folder.mkdir()
    names = ["=HYPERLINK(1).png", "+1.png", "-2.png", "@SUM(A1).png", "ok.png"]
    for name in names:
        noise((32, 32)).save(folder / name, "PNG")
    monkeypatch.chdir(folder)  # paths as typed: "=HYPERLINK(1).png" starts the cell
    out = tmp_path / "r.csv"
    result = classify(".", "--labels", "=1+1,-人,@车", "--dtype", "float32", "--threads", "1",
                      "--model", tiny_clip, "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(out.read_text(encoding="utf-8-sig").splitlines()))
    assert rows[0] == ["path", "label", "score", "top_k", "labels", "width", "height", "error"]
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@")), row
    _, records = read_existing(out, ClassifyResult)  # the escape is undone when read back
    assert sorted(r["path"] for r in records) == sorted(names)
    assert {r["label"] for r in records} <= {"=1+1", "-人", "@车"}


def test_csv_resume_with_odd_names_keeps_each_image_once(tiny_clip, tmp_path, monkeypatch):
    """Names that CSV must quote, escape or defuse still match their record when resuming."""
    folder = tmp_path / "odd"
    folder.mkdir()
    names = [b"=cmd.png", "猫.png".encode(), b"new\nline.png", NON_UTF8_NAME, b"back\\ud800slash.png",
             b"'quote.png", b'comma,"q".png', b"ok.png"]
    for name in names:
        with open(os.path.join(os.fsencode(folder), name), "wb") as fh:
            fh.write(encoded(noise((24, 24)), "PNG"))
    monkeypatch.chdir(folder)
    out = tmp_path / "r.csv"
    assert classify(".", *FAST, "--model", tiny_clip, "--out", out).exit_code == 0
    full = out.read_bytes()
    full.decode("utf-8")
    rows = full.split(b"\r\n")  # rows end in CRLF; the quoted name keeps its bare LF
    assert len(rows) == 1 + len(names) + 1 and rows[-1] == b""
    out.write_bytes(b"\r\n".join(rows[:6]) + b"\r\n" + rows[6][:9])  # 5 records and a torn 6th
    result = classify(".", *FAST, "--model", tiny_clip, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    from wwts.core.output.records import ClassifyResult
    from wwts.core.output import read_existing

    _, records = read_existing(out, ClassifyResult)
    assert sorted(os.fsencode(r["path"]) for r in records) == sorted(names)  # each once, bytes intact
    assert all(r["label"] for r in records)


# --- models: no remote code, safetensors first --------------------------------------------------------


EVIL = "import os\nopen(os.environ['WWTS_TEST_MARKER'], 'w').write('ran')\n"


def test_model_code_is_not_run_without_trust_remote_code(tiny_clip, tmp_path, monkeypatch, six_images):
    marker = tmp_path / "remote-code-ran"
    monkeypatch.setenv("WWTS_TEST_MARKER", str(marker))
    model = Path(shutil.copytree(tiny_clip, tmp_path / "model-with-code"))
    (model / "configuration_evil.py").write_text(EVIL + "from transformers import ChineseCLIPConfig as EvilConfig\n")
    (model / "modeling_evil.py").write_text(EVIL + "from transformers import ChineseCLIPModel as EvilModel\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config))
    # a known model type: transformers' own class is used and the folder's code is ignored
    result = classify(six_images, *FAST, "--model", model, "--out", tmp_path / "a.jsonl")
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    # an unknown model type needs the code: refused with one line, the code still not run
    config["model_type"] = "evil_clip"
    (model / "config.json").write_text(json.dumps(config))
    result = classify(six_images, *FAST, "--model", model, "--out", tmp_path / "b.jsonl")
    assert result.exit_code == 2, result.output
    assert not marker.exists()
    no_traceback(result.output)
    # one error line, the last: only the start line and "loading model" come before it
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr


def test_safetensors_weights_are_preferred(tiny_clip, tmp_path, six_images):
    model = Path(shutil.copytree(tiny_clip, tmp_path / "both-weights"))
    assert (model / "model.safetensors").exists()
    (model / "pytorch_model.bin").write_bytes(b"not a pickle: loading this would fail")
    result = classify(six_images, *FAST, "--model", model, "--out", tmp_path / "r.jsonl")
    assert result.exit_code == 0, result.output


# --- scale ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_discovery_of_20000_files_streams(tmp_path, capsys):
    folder = tmp_path / "big"
    folder.mkdir()
    tiny = encoded(Image.new("RGB", (1, 1)), "PNG")
    n = 20_000
    names = [f"{i:05d}.{('jpg', 'png', 'JPG', 'txt')[i % 4]}" for i in range(n)]
    for name in names:
        (folder / name).write_bytes(tiny)
    expected = [folder / name for name in sorted(names) if not name.endswith(".txt")]

    t0 = time.perf_counter()
    stream = discover([folder])
    first = next(stream)
    t_first = time.perf_counter() - t0
    rest = sum(1 for _ in stream)
    t_stream = time.perf_counter() - t0
    assert first == expected[0] and 1 + rest == len(expected)

    tracemalloc.start()
    count = sum(1 for _ in discover([folder]))  # streaming: nothing kept
    _, peak_stream = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    from wwts.core.config import RunConfig

    tracemalloc.start()
    t0 = time.perf_counter()
    found = engine.find_images(RunConfig(task="classify", inputs=(folder,), labels=("人",)))
    t_list = time.perf_counter() - t0
    current, peak_list = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == len(expected) == 15_000
    assert found == expected  # each once, sorted by name (code points: "JPG" files are among them)
    with capsys.disabled():
        print(f"\n[20k discovery] {n} files, {len(found)} images: first path after {t_first * 1000:.1f} ms, "
              f"streamed all in {t_stream * 1000:.1f} ms; find_images (list) {t_list * 1000:.1f} ms; "
              f"tracemalloc peak streaming {peak_stream / 1e6:.2f} MB, with the path list "
              f"{peak_list / 1e6:.2f} MB (list kept: {current / 1e6:.2f} MB, "
              f"{current / len(found):.0f} B/path)")
    # the walk itself costs about one folder's names (plus the set that drops duplicates), not a
    # multiple of the path list: before core/discover.py stopped keeping DirEntry objects with
    # their cached stat results, peak_list was 5.4x the list and peak_stream 4.4x
    assert peak_stream < 2 * current and peak_list < 3 * current
