"""XMP sidecars (``--write-xmp``, ``core.xmp``): keywords and caption beside the photo, merged with
what a sidecar already holds, read back by exiftool (Debian's ``libimage-exiftool-perl``)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wwts.cli.app import app
from wwts.core.errors import WwtsError
from wwts.core.output import read_results
from wwts.core.xmp import SidecarTagger, read_sidecar, sidecar_path, write_sidecar

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool missing: apt-get install -y "
                                    "libimage-exiftool-perl (.ci/run does)")

#: A sidecar as darktable writes one, with a rating, a history, a person's keyword and description.
DARKTABLE = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:darktable="http://darktable.sf.net/" xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmp:Rating="4" darktable:history_end="2">
   <darktable:history><rdf:Seq><rdf:li darktable:operation="exposure" darktable:enabled="1"/></rdf:Seq></darktable:history>
   <dc:subject><rdf:Bag><rdf:li>family</rdf:li></rdf:Bag></dc:subject>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">Grandma's garden</rdf:li></rdf:Alt></dc:description>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def exiftool(path: Path) -> dict:
    done = subprocess.run([EXIFTOOL, "-j", "-charset", "UTF8", "-XMP-dc:Subject", "-XMP-dc:Description",
                           "-XMP-xmp:Rating", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]


@pytest.mark.slow
def test_classify_write_xmp(tiny_clip, sample_images, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    shutil.copytree(sample_images, photos, ignore=shutil.ignore_patterns("*.md"))
    (photos / "broken.jpg").write_bytes(b"not a JPEG")
    before = {p.name: digest(p) for p in photos.iterdir()}
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["classify", "photos", "--labels", "猫,狗,花", "--model", str(tiny_clip),
                                    "--out", "r.jsonl", "--write-xmp"])
    assert done.exit_code == 3, done.output
    assert {p.name: digest(p) for p in photos.iterdir() if p.suffix != ".xmp"} == before  # photos untouched
    for rec in read_results(tmp_path / "r.jsonl").records:
        side = sidecar_path(Path(rec["path"]))
        if rec["error"]:
            assert not side.exists()
        else:
            assert read_sidecar(side)["subject"] == [rec["label"]]
    assert "xmp: 9 sidecars written (9 new)" in done.output


def test_merge_keeps_other_fields_and_replaces_own_keywords(tmp_path):
    photo = tmp_path / "IMG_0001.jpg"
    photo.write_bytes(b"pretend JPEG")
    side = sidecar_path(photo)
    side.write_text(DARKTABLE, encoding="utf-8")
    _, created, kept_description = write_sidecar(photo, ["猫", "花"], "a cat in a garden")
    assert not created and kept_description
    text = side.read_text(encoding="utf-8")
    assert 'xmp:Rating="4"' in text and 'darktable:operation="exposure"' in text and "XMP Core 4.4.0" in text
    assert read_sidecar(side) == {"subject": ["family", "猫", "花"], "description": "Grandma's garden"}
    write_sidecar(photo, ["狗"])  # a later run with other labels: its keywords replace wwts' earlier ones
    assert read_sidecar(side)["subject"] == ["family", "狗"]
    assert photo.read_bytes() == b"pretend JPEG"


def test_caption_and_naming(tmp_path):
    photo = tmp_path / "IMG_0002.png"
    photo.write_bytes(b"x")
    path, created, _ = write_sidecar(photo, (), "a dog on a beach", naming="replace")
    assert path == tmp_path / "IMG_0002.xmp" and created
    assert read_sidecar(path) == {"subject": [], "description": "a dog on a beach"}
    write_sidecar(photo, (), "a dog on the sand", naming="replace")  # wwts' own caption is replaced
    assert read_sidecar(path)["description"] == "a dog on the sand"
    assert sidecar_path(photo) == tmp_path / "IMG_0002.png.xmp"


def test_hostile_or_broken_sidecar_is_left_alone(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    bomb = '<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>'
    for text in (bomb, "<x:xmpmeta", "<html/>"):
        sidecar_path(photo).write_text(text)
        with pytest.raises(WwtsError, match="left as it was"):
            write_sidecar(photo, ["猫"])
        assert sidecar_path(photo).read_text() == text


def test_tagger_reports_each_failure_and_goes_on(tmp_path):
    for name in ("a.jpg", "a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"x")
    sidecar_path(tmp_path / "b.jpg", "replace").write_text("not xml")
    tagger = SidecarTagger(naming="replace")
    lines = tagger.write([{"path": str(tmp_path / n), "label": "猫", "score": 0.9} for n in ("a.jpg", "a.png", "b.jpg")]
                         + [{"path": str(tmp_path / "c.jpg"), "error": "empty: 0 bytes"}])
    assert tagger.written == 1 and tagger.failed == 2 and len(lines) == 2
    assert "already holds the tags of" in lines[0] and "b.xmp" in lines[1]
    assert not (tmp_path / "c.xmp").exists()


@needs_exiftool
def test_exiftool_reads_the_keywords_back(tmp_path):
    photo = tmp_path / "IMG_0003.jpg"
    photo.write_bytes(b"x")
    side = sidecar_path(photo)
    side.write_text(DARKTABLE, encoding="utf-8")
    write_sidecar(photo, ["猫", "<狗 & 猫>"], "ignored: the sidecar has its own description")
    facts = exiftool(side)
    assert facts["Subject"] == ["family", "猫", "<狗 & 猫>"]
    assert facts["Description"] == "Grandma's garden" and facts["Rating"] == 4
    new, _, _ = write_sidecar(tmp_path / "IMG_0004.jpg", ["花"], "一朵花")  # (path, created, kept_description)
    assert exiftool(new)["Subject"] == "花" and exiftool(new)["Description"] == "一朵花"
