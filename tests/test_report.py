"""``wwts report`` and ``--report``: the HTML contact sheet, checked in a real headless browser.

The browser is Debian's ``chromium`` (``.ci/run`` installs it); without it the browser tests are
skipped with the reason. The page is loaded from a ``file:`` URL with every network feature off;
``--dump-dom`` gives the DOM after the page's script ran, with the filter taken from the URL
fragment (``#label=...``), as a user's bookmark would set it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from wwts.cli.app import app
from wwts.core.output import ClassifyResult, LabelScore, open_writer, read_results
from wwts.core.report import thumbs_folder, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: install Debian's chromium "
                                   "(apt-get install -y chromium; .ci/run does)")


def browser(tmp_path: Path, page: Path, *args: str, fragment: str = "") -> str:
    """Run headless chromium on ``page`` (``--dump-dom`` or ``--screenshot=...``); its stdout."""
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--window-size=1280,900", *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def cards(dom: str) -> list[str]:
    """The opening tags of the cards in a dumped DOM."""
    return re.findall(r'<figure class="card[^>]*>', dom)


def visible(dom: str) -> list[str]:
    return [c for c in cards(dom) if " hidden" not in c]


def attr(tag: str, name: str) -> str:
    import html

    return html.unescape(re.search(fr'{name}="([^"]*)"', tag).group(1))


def write_results(path: Path, photos: list[Path], labels: list[str], scores: list[float], errors=()) -> Path:
    """A results file written by wwts' own writer: photo i labelled ``labels[i]`` with ``scores[i]``."""
    run = {"task": "classify", "model": "test-model", "device": "cpu", "dtype": "float32", "images_per_s": 12.5}
    with open_writer(path, ClassifyResult, run) as writer:
        records = [ClassifyResult(path=str(p), width=8, height=8, label=lab, score=s,
                                  top_k=[LabelScore(lab, s), LabelScore("其他", 1 - s)])
                   for p, lab, s in zip(photos, labels, scores)]
        records += [ClassifyResult(path=str(p), error=e) for p, e in errors]
        writer.write(records)
    return path


@pytest.fixture
def photos(sample_images, tmp_path) -> Path:
    """A copy of the sample images plus one file that is not an image."""
    folder = tmp_path / "photos"
    shutil.copytree(sample_images, folder, ignore=shutil.ignore_patterns("*.md"))
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    return folder


@needs_browser
@pytest.mark.slow
def test_report_of_sample_images_in_a_browser(tiny_clip, photos, tmp_path, monkeypatch):
    """classify --report: one card per record, the error record shown as such, a screenshot."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["classify", "photos", "--labels", "人,车,动物,猫,咖啡,火箭,花,建筑",
                                      "--model", str(tiny_clip), "--dtype", "float32", "--out", "r.jsonl",
                                      "--report", "report.html"])
    assert result.exit_code == 3, result.output  # the broken file
    records = read_results(tmp_path / "r.jsonl").records
    assert len(records) == len(list(photos.iterdir()))
    dom = browser(tmp_path, tmp_path / "report.html", "--dump-dom")
    assert len(cards(dom)) == len(records)
    errors = [c for c in cards(dom) if 'class="card error"' in c]
    assert [attr(c, "data-path") for c in errors] == ["photos/broken.jpg"]
    assert re.search(r'<figure class="card error".*?<strong>error:</strong> unidentified', dom, re.S)
    assert re.search(r'id="shown"[^>]*>%d of %d shown<' % (len(records), len(records)), dom)
    assert dom.count('loading="lazy"') == len(records) - 1  # every photo but the broken one has a thumbnail
    shot = tmp_path / "report.png"
    browser(tmp_path, tmp_path / "report.html", f"--screenshot={shot}")
    with Image.open(shot) as im:
        assert im.size == (1280, 900)
        assert len(im.convert("L").resize((64, 48)).getcolors(4096)) > 20  # thumbnails drawn, not a blank page


@needs_browser
def test_label_filter_and_sort_by_score_in_a_browser(sample_images, tmp_path):
    photos = sorted(p for p in sample_images.iterdir() if p.suffix in (".jpg", ".png"))[:6]
    labels = ["猫", "狗", "猫", "狗", "狗", "猫"]
    scores = [0.50, 0.91, 0.93, 0.40, 0.70, 0.60]
    results = write_results(tmp_path / "r.jsonl", photos, labels, scores, errors=[(tmp_path / "x.jpg", "empty: 0 bytes")])
    write_report(read_results(results), tmp_path / "report.html")
    dom = browser(tmp_path, tmp_path / "report.html", "--dump-dom",
                  fragment="label=" + urllib.parse.quote("猫") + "&sort=score-desc")
    shown = visible(dom)
    assert len(cards(dom)) == 7
    assert {attr(c, "data-labels") for c in shown} == {json.dumps(["猫"], ensure_ascii=False)}
    assert [float(attr(c, "data-score")) for c in shown] == [0.93, 0.60, 0.50]
    assert re.search(r'id="shown"[^>]*>3 of 7 shown<', dom)
    dom = browser(tmp_path, tmp_path / "report.html", "--dump-dom", fragment="q=" + photos[1].stem)
    assert [attr(c, "data-path") for c in visible(dom)] == [str(photos[1])]


def test_user_text_is_escaped(tmp_path):
    photo = tmp_path / 'a "<b>&.png'
    Image.new("RGB", (20, 10), "red").save(photo, "PNG")
    label = "<script>alert(1)</script>"
    results = write_results(tmp_path / "r.csv", [photo], [label], [0.9], errors=[(tmp_path / "<i>.jpg", "x: <b>")])
    page = write_report(read_results(results), tmp_path / "r.html").page
    html = page.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in html and "<b>" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="a%20%22%3Cb%3E%26.png"' in html  # a percent-encoded link to the photo, relative to the page


@pytest.mark.parametrize("ext", [".csv", ".json", ".jsonl"])
def test_every_output_format_gives_the_same_cards(sample_images, tmp_path, ext):
    photos = sorted(sample_images.glob("*.jpg"))[:3]
    results = read_results(write_results(tmp_path / f"r{ext}", photos, ["猫", "狗", "猫"], [0.5, 0.6, 0.7]))
    assert results.task == "classify" and results.run["model"] == "test-model"
    html = write_report(results, tmp_path / "r.html").page.read_text(encoding="utf-8")
    assert len(cards(html)) == 3
    assert "test-model" in html and "12.5" in html  # the summary header from the run section


def test_thumbnails_are_small_oriented_and_cached(tmp_path):
    photo = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: a 600x300 file shows as 300x600
    Image.new("RGB", (600, 300), "blue").save(photo, "JPEG", exif=exif)
    results = read_results(write_results(tmp_path / "r.jsonl", [photo], ["猫"], [0.9]))
    made = write_report(results, tmp_path / "r.html")
    [thumb] = list(thumbs_folder(made.page).glob("*.jpg"))
    with Image.open(thumb) as im:
        assert im.size == (128, 256)
    before = thumb.stat().st_mtime_ns
    write_report(results, tmp_path / "r.html")
    assert thumb.stat().st_mtime_ns == before  # reused from the cache
    photo.touch()
    write_report(results, tmp_path / "r.html")
    assert not thumb.exists() and len(list(thumbs_folder(made.page).glob("*.jpg"))) == 1  # remade, old one pruned


def test_embedded_report_is_one_file(sample_images, tmp_path):
    photos = sorted(sample_images.glob("*.jpg"))[:2]
    results = read_results(write_results(tmp_path / "r.jsonl", photos, ["猫", "狗"], [0.5, 0.6]))
    made = write_report(results, tmp_path / "r.html", embed=True)
    html = made.page.read_text(encoding="utf-8")
    assert made.folder is None and not thumbs_folder(made.page).exists()
    assert html.count('src="data:image/jpeg;base64,') == 2
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html


def test_report_command(sample_images, tmp_path):
    results = write_results(tmp_path / "r.jsonl", sorted(sample_images.glob("*.jpg"))[:2], ["猫", "狗"], [0.5, 0.6])
    done = CliRunner().invoke(app, ["report", str(results)])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "r.html").is_file() and "2 records, 0 errors" in done.output
    assert CliRunner().invoke(app, ["report", str(tmp_path / "missing.jsonl")]).exit_code == 2
    assert CliRunner().invoke(app, ["report", str(results), "--out", str(tmp_path / "r.txt")]).exit_code == 2
