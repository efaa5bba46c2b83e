"""Hostile inputs of issue 10, end to end: extreme aspect ratios, broken TIFFs whose decoder writes
to stderr, and broken symbolic links. Each still gives one record per file and no traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import classify
from wwts.core.input import MAX_ASPECT_RATIO

FAST = ("--labels", "人,车", "--dtype", "float32", "--threads", "1")
needs_symlinks = pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")


def read_records(out: Path) -> dict[str, dict]:
    """Records of a ``.jsonl`` output by file name."""
    lines = out.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    by_name = {Path(r["path"]).name: r for r in records}
    assert len(by_name) == len(records), "an image has two records"
    return by_name


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


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
    result = classify(folder, *FAST, "--model", tiny_clip, "--out", out)
    assert_no_traceback(result.output, *capfd.readouterr())
    assert result.exit_code == 3, result.output
    records = read_records(out)
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
    assert_no_traceback(result.output, *capfd.readouterr())
    assert result.exit_code == 3, result.output
    records = read_records(out)
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
                      *FAST, "--model", tiny_clip, "--out", out)
    captured = capfd.readouterr()
    assert_no_traceback(result.output, *captured)
    for stream in captured:  # nothing written to the process's file descriptors 1 and 2
        assert "Decode" not in stream and "Bad code word" not in stream, stream
    assert result.exit_code == 3, result.output
    records = read_records(out)
    for name in ("fax.tif", "fax_named.jpg"):
        assert records[name]["error"] is None and records[name]["label"], records[name]
        assert "Fax4Decode: Bad code word" in records[name]["note"], records[name]
    assert records["zip.tiff"]["error"].startswith("decode: "), records["zip.tiff"]
    assert "ZIPDecode" in records["zip.tiff"]["error"]
    assert records["fine.tif"]["error"] is None and records["fine.tif"]["note"] is None


# --- symbolic links: one rule ------------------------------------------------------------------------


@needs_symlinks
def test_every_broken_link_gets_a_link_record_and_the_run_goes_on(tiny_clip, tmp_path, capfd):
    folder = tmp_path / "album"
    folder.mkdir()
    Image.new("RGB", (40, 30), (20, 20, 200)).save(folder / "good.png")
    os.symlink("missing.jpg", folder / "dangling.jpg")
    os.symlink("loop.png", folder / "loop.png")  # a link to itself
    os.symlink("gone", folder / "old_folder")  # no image name: a warning, not a record
    os.symlink("good.png", folder / "zz_alias.png")  # a working link: the same file, one record
    named = tmp_path / "named_loop.jpg"
    os.symlink(named.name, named)
    out = tmp_path / "r.jsonl"
    result = classify(folder, named, *FAST, "--model", tiny_clip, "--out", out)
    assert_no_traceback(result.output, *capfd.readouterr())
    assert result.exit_code == 3, result.output  # not 2: a link loop named on the command line is a record
    records = read_records(out)
    assert sorted(records) == ["dangling.jpg", "good.png", "loop.png", "named_loop.jpg"]
    assert records["dangling.jpg"]["error"] == "link: broken symbolic link: its target 'missing.jpg' does not exist"
    for name in ("loop.png", "named_loop.jpg"):
        assert records[name]["error"].startswith("link: symbolic link loop"), records[name]
    assert records["good.png"]["label"]
    assert "old_folder" in result.stderr and "broken symbolic link" in result.stderr
