"""Hostile inputs of issue 10, end to end: extreme aspect ratios, broken TIFFs whose decoder writes
to stderr, and broken symbolic links. Each still gives one record per file and no traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import classify

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
