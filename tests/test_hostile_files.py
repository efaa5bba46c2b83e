"""The hostile-file suite, end to end (issues 6 and 10): a folder of broken, odd and dangerous files
gives one record per image, a one-line ``category: message`` error for every bad file, exit code 3
and no traceback; a decoder that crashes, writes to stderr or says several lines costs one record;
images of extreme aspect ratio are refused before the processor (classify and caption); --max-pixels
and --allow-truncated decide what a file may be.

Every test goes through the command line (``typer.testing.CliRunner`` on ``wwts.cli.app.app``,
in-process). The unit-level behaviour of each part has its own tests (test_decode.py,
test_discover.py, test_writers.py, test_pool.py); these check that the parts hold together.

The model is the session's tiny random Chinese-CLIP (``tiny_clip``). Its scores are near-uniform
but deterministic in float32, so "this file was decoded like that reference picture" is checked by
comparing the two records' scores (``same_scores``) instead of looking at label order.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import (classify, encoded, invoke_with_deadline, no_traceback, noise_image, png_claiming,
                           read_jsonl, records_by_name)
from wwts.core.engine import local as engine_local, plan as engine
from wwts.core.input import MAX_ASPECT_RATIO
from wwts.core.input.decode import AVIF_SUPPORTED, HEIF_SUPPORTED, SUPPORTED_FORMATS
from wwts.core.input.discover import IMAGE_EXTENSIONS

LABELS = "人,车,猫"
#: float32 and one torch thread: deterministic scores, and cheap on the 2-core test machine.
FAST = ("--labels", LABELS, "--top-k", "3", "--dtype", "float32", "--threads", "1")
#: Categories ``core.images`` / ``core.decode`` / the engine put in front of an error message.
CATEGORIES = {"not_found", "not_a_file", "permission", "empty", "unidentified", "truncated",
              "too_large", "decode", "crashed", "preprocess", "inference", "link", "aspect_ratio"}
ERROR_RE = re.compile(r"^([a-z_]+): \S.*$")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NON_UTF8_NAME = b"photo-\xff\xfe-\xe9t\xe9.png"  # Latin-1 bytes: not valid UTF-8


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


def test_a_crashing_decoder_costs_one_record(tiny_clip, tmp_path, monkeypatch, capfd):
    """HEIF/AVIF decode in a worker process: when native code kills it, the run goes on."""
    from tests.helpers import crashing_load  # importable by name in the spawned worker

    if not HEIF_SUPPORTED:
        pytest.skip("no HEIF support: .heic files are not picked up")
    monkeypatch.setattr(engine_local, "DecodePool", functools.partial(engine_local.DecodePool, isolated_load=crashing_load))
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


FAST_2_LABELS = ("--labels", "人,车", "--dtype", "float32", "--threads", "1")


def thin_images(folder: Path) -> None:
    """The issue's 107-byte killer, a tall one, one exactly at the limit, and a normal image."""
    folder.mkdir()
    Image.new("RGB", (8000, 1)).save(folder / "thin.png")
    Image.new("RGB", (3, 4000)).save(folder / "tall.png")
    Image.new("RGB", (MAX_ASPECT_RATIO * 10, 10), (0, 90, 0)).save(folder / "edge.png")  # 200:1 is allowed
    Image.new("RGB", (60, 40), (200, 30, 30)).save(folder / "plain.png")


def check_thin_records(records: dict[str, dict]) -> None:
    assert sorted(records) == ["edge.png", "plain.png", "tall.png", "thin.png"]
    for name in ("thin.png", "tall.png"):
        assert records[name]["error"].startswith("aspect_ratio: "), records[name]
        assert "limit of 200:1" in records[name]["error"]
    assert records["thin.png"]["width"] in (None, 8000)  # refused from the header, before any resize
    for name in ("edge.png", "plain.png"):
        assert records[name]["error"] is None, records[name]


def test_extreme_aspect_ratio_is_refused_before_the_processor_classify(tiny_clip, tmp_path, capfd):
    folder = tmp_path / "thin"
    thin_images(folder)
    out = tmp_path / "r.jsonl"
    result = classify(folder, *FAST_2_LABELS, "--model", tiny_clip, "--out", out)
    no_traceback(result.output, *capfd.readouterr())
    assert result.exit_code == 3, result.output
    records = records_by_name(out)
    check_thin_records(records)
    assert records["plain.png"]["label"] and records["edge.png"]["label"]


@pytest.fixture(scope="module")
def tiny_git(tmp_path_factory):
    """GIT's processor is CLIP's: short side to the input size, then a crop (the blow-up case)."""
    from tests.tiny_caption_models import build_tiny_git

    return build_tiny_git(tmp_path_factory.mktemp("caption") / "tiny-git")


def test_extreme_aspect_ratio_is_refused_before_the_processor_caption(tiny_git, tmp_path, capfd):
    from typer.testing import CliRunner

    from wwts.cli.app import app

    folder = tmp_path / "thin"
    thin_images(folder)
    out = tmp_path / "c.jsonl"
    result = CliRunner().invoke(app, ["caption", str(folder), "--model", str(tiny_git), "--out", str(out),
                                      "--max-new-tokens", "3", "--dtype", "float32"])
    no_traceback(result.output, *capfd.readouterr())
    assert result.exit_code == 3, result.output
    records = records_by_name(out)
    check_thin_records(records)
    assert isinstance(records["plain.png"]["caption"], str)


# --- broken TIFFs: libtiff's messages belong to the file ----------------------------------------------


def corrupt_tiff(path: Path, image: Image.Image, compression: str) -> Path:
    """``image`` saved as a TIFF with ``compression``, then its strip bytes scrambled (header intact)."""
    image.save(path, format="TIFF", compression=compression)
    with Image.open(path) as im:
        start, length = im.tag_v2[273][0], im.tag_v2[279][0]
    data = bytearray(path.read_bytes())
    for i in range(start + 2, start + length):
        data[i] ^= 0xA5 if compression == "group4" else 0x5A
    path.write_bytes(bytes(data))
    return path


def fax_image() -> Image.Image:
    im = Image.new("1", (64, 64), 1)
    for x in range(0, 64, 3):
        im.putpixel((x, x // 2), 0)
    return im


def test_libtiff_messages_go_into_the_record_not_to_stderr(tiny_clip, tmp_path, capfd):
    folder = tmp_path / "scans"
    folder.mkdir()
    corrupt_tiff(folder / "fax.tif", fax_image(), "group4")  # decodes, libtiff complains
    corrupt_tiff(folder / "fax_named.jpg", fax_image(), "group4")  # a TIFF by content, not by name
    corrupt_tiff(folder / "zip.tiff", Image.effect_noise((64, 64), 64).convert("RGB"), "tiff_deflate")
    fax_image().save(folder / "fine.tif", compression="group4")
    out = tmp_path / "r.jsonl"
    capfd.readouterr()
    result = classify(folder / "fax.tif", folder / "fax_named.jpg", folder / "zip.tiff", folder / "fine.tif",
                      *FAST_2_LABELS, "--model", tiny_clip, "--out", out)
    captured = capfd.readouterr()
    no_traceback(result.output, *captured)
    for stream in captured:  # nothing written to the process's file descriptors 1 and 2
        assert "Decode" not in stream and "Bad code word" not in stream, stream
    assert result.exit_code == 3, result.output
    records = records_by_name(out)
    for name in ("fax.tif", "fax_named.jpg"):
        assert records[name]["error"] is None and records[name]["label"], records[name]
        assert "Fax4Decode: Bad code word" in records[name]["note"], records[name]
    assert records["zip.tiff"]["error"].startswith("decode: "), records["zip.tiff"]
    assert "ZIPDecode" in records["zip.tiff"]["error"]
    assert records["fine.tif"]["error"] is None and records["fine.tif"]["note"] is None
