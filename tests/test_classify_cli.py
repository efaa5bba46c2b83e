"""End-to-end ``wwts classify`` on a tiny random Chinese-CLIP saved to disk (offline)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import (classify, encoded, invoke_with_deadline, no_traceback, noise_image, one_error_line,
                           png_claiming, read_jsonl, records_by_name)

LABELS = "人,车,动物,猫,花"


def sample_count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".png"})


@pytest.mark.parametrize("ext", ["csv", "json", "jsonl"])
def test_every_sample_image_gets_one_record(tiny_clip, sample_images, tmp_path, ext):
    out = tmp_path / f"r.{ext}"
    result = classify(sample_images, "--labels", LABELS, "--model", tiny_clip, "--out", out, "--top-k", "5")
    assert result.exit_code == 0, result.output
    if ext == "csv":
        raw = out.read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf")  # BOM so Excel reads UTF-8
        rows = list(csv.DictReader(raw.decode("utf-8-sig").splitlines()))
        assert list(rows[0]) == ["path", "label", "score", "top_k", "labels", "width", "height", "error"]
        records = rows
        for row in rows:
            pairs = [item.rsplit(":", 1) for item in row["top_k"].split(";")]
            assert [p[0] for p in pairs][0] == row["label"]
            assert abs(sum(float(p[1]) for p in pairs) - 1.0) < 2e-3
    else:
        if ext == "json":
            doc = json.loads(out.read_text(encoding="utf-8"))
            run = doc["run"]
            for key in ("model", "device", "dtype", "batch_size", "images_per_s", "started", "finished"):
                assert key in run, key
            # the device as the run's backend names it (--backend auto: OpenVINO's "CPU" on an x86 CPU)
            assert run["device"] == ("CPU" if run["backend"] == "openvino" else "cpu")
            records = doc["results"]
        else:
            records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        for rec in records:
            assert rec["error"] is None
            scores = [t["score"] for t in rec["top_k"]]
            assert all(0.0 <= s <= 1.0 for s in scores)
            assert abs(sum(scores) - 1.0) < 1e-4  # top-5 of 5 labels: the whole softmax
            assert scores == sorted(scores, reverse=True)
            assert rec["label"] == rec["top_k"][0]["label"] and rec["score"] == scores[0]
            assert rec["width"] > 0 and rec["height"] > 0
    assert len(records) == sample_count(sample_images)
    paths = [r["path"] for r in records]
    assert paths == sorted(paths) and len(set(paths)) == len(paths)


def test_paths_are_as_typed_and_top_k_capped(tiny_clip, sample_images, tmp_path, monkeypatch):
    monkeypatch.chdir(sample_images.parent)
    out = tmp_path / "r.jsonl"
    result = classify("sample_images", "--labels", "猫，狗", "--model", tiny_clip, "--out", out, "--top-k", "9")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert all(r["path"].startswith("sample_images/") for r in records)
    assert all(len(r["top_k"]) == 2 for r in records)
    assert {t["label"] for t in records[0]["top_k"]} == {"猫", "狗"}


def test_table_on_stdout_without_out(tiny_clip, sample_images, tmp_path):
    # A path far wider than the 80 columns rich assumes off a terminal: it must still appear whole.
    deep = tmp_path / ("长路径" * 10) / ("x" * 60)
    deep.mkdir(parents=True)
    image = deep / "chelsea.png"
    shutil.copy(sample_images / "chelsea.png", image)
    result = classify(image, "--labels", LABELS, "--model", tiny_clip)
    assert result.exit_code == 0, result.output
    assert str(image) in result.stdout
    assert "device cpu" in result.stderr.lower() and "batch size" in result.stderr  # torch's cpu, OpenVINO's CPU
    assert "CPU mode" in result.stderr


def test_labels_file(tiny_clip, sample_images, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\ufeff# 我的标签\n人\n\n车  # 汽车\n动物\n", encoding="utf-8")
    out = tmp_path / "r.json"
    result = classify(sample_images / "coffee.jpg", "--labels-file", labels, "--model", tiny_clip, "--out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["run"]["labels"] == ["人", "车", "动物"]
    assert {t["label"] for t in doc["results"][0]["top_k"]} == {"人", "车", "动物"}


@pytest.mark.parametrize("args, message", [
    (("--labels", "人,车", "--vocab", "imagenet"), "not both"),  # no labels at all: the everyday vocabulary
    (("--labels", "人,车,人"), "duplicate label"),
    (("--labels", "人,,车"), "empty label"),
    (("--labels", "人,车", "--out", "r.txt"), ".csv"),
    (("--labels", "人,车", "--prompt", "没有占位符"), "{}"),
])
def test_usage_errors_exit_2(tiny_clip, sample_images, args, message):
    result = classify(sample_images, "--model", tiny_clip, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_missing_path_exits_2(tiny_clip, tmp_path):
    result = classify(tmp_path / "nope", "--labels", LABELS, "--model", tiny_clip)
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_model_not_cached_and_offline_is_one_clear_line(sample_images):
    result = classify(sample_images, "--labels", LABELS, "--model", "OFA-Sys/chinese-clip-vit-base-patch16")
    assert result.exit_code == 2
    # The start line and "loading model …" come first (printed before loading), then one error line.
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and result.stderr.rstrip().endswith(lines[0]), result.stderr
    assert "--model" in lines[0] and "HF_ENDPOINT" in lines[0] and "not in the local cache" in lines[0]
    assert "Traceback" not in result.output


def test_explicit_cuda_on_cpu_machine_exits_2(tiny_clip, sample_images):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = classify(sample_images, "--labels", LABELS, "--model", tiny_clip, "--device", "cuda:3")
    assert result.exit_code == 2
    assert "cuda:3" in result.stderr and "Traceback" not in result.output


def test_broken_file_gives_one_error_record_and_exit_3(tiny_clip, sample_images, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(sample_images, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    out = tmp_path / "r.jsonl"
    result = classify(folder, "--labels", LABELS, "--model", tiny_clip, "--out", out, "-b", "3")
    assert result.exit_code == 3, result.output
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == sample_count(sample_images) + 1
    bad = [r for r in records if r["error"]]
    assert [Path(r["path"]).name for r in bad] == ["broken.jpg"]
    assert bad[0]["label"] is None and bad[0]["top_k"] == []
    assert all(r["label"] for r in records if not r["error"])


def test_macos_appledouble_files_are_not_failures(tiny_clip, sample_images, tmp_path):
    # A Mac copying photos to an exFAT drive writes a 4 KiB "._NAME" resource file beside each.
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sample_images / "chelsea.png", folder / "chelsea.png")
    (folder / "._chelsea.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4066))
    out = tmp_path / "r.jsonl"
    result = classify(folder, "--labels", LABELS, "--model", tiny_clip, "--out", out)
    assert result.exit_code == 0, result.output
    assert [Path(json.loads(line)["path"]).name for line in out.read_text(encoding="utf-8").splitlines()] == [
        "chelsea.png"]
    result = classify(folder, "--labels", LABELS, "--model", tiny_clip, "--out", out, "--overwrite",
                      "--include-hidden")
    assert result.exit_code == 3, result.output  # taken when asked for, and it is not an image
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(Path(r["path"]).name, bool(r["error"])) for r in records] == [("._chelsea.png", True),
                                                                           ("chelsea.png", False)]


def _orientation_pair(tmp_path: Path) -> tuple[Path, Path]:
    """An upright PNG, and the same scene stored rotated with EXIF orientation 6."""
    upright = Image.new("RGB", (60, 30))
    upright.putdata([(x * 4, y * 8, (x * y) % 256) for y in range(30) for x in range(60)])
    a = tmp_path / "upright.png"
    upright.save(a)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    b = tmp_path / "rotated6.png"
    stored.save(b, exif=exif)
    return a, b


def test_exif_orientation_6_is_scored_after_rotation(tiny_clip, tmp_path):
    a, b = _orientation_pair(tmp_path)
    out = tmp_path / "r.jsonl"
    result = classify(a, b, "--labels", LABELS, "--model", tiny_clip, "--out", out, "--top-k", "5",
                      "--dtype", "float32")  # compared at 1e-5: pinned, not left to the CPU
    assert result.exit_code == 0, result.output
    ra, rb = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert (rb["width"], rb["height"]) == (ra["width"], ra["height"]) == (60, 30)
    assert {t["label"]: t["score"] for t in rb["top_k"]} == pytest.approx(
        {t["label"]: t["score"] for t in ra["top_k"]}, abs=1e-5)


def test_real_exif_orientation_6(tiny_clip, exif_samples, tmp_path):
    folder = exif_samples / "jpg" / "orientation"
    out = tmp_path / "r.jsonl"
    result = classify(folder / "landscape_1.jpg", folder / "landscape_6.jpg", "--labels", LABELS,
                      "--model", tiny_clip, "--out", out)
    assert result.exit_code == 0, result.output
    r1, r6 = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert (r6["width"], r6["height"]) == (r1["width"], r1["height"])
    assert r1["width"] > r1["height"]  # a landscape after orientation


def test_existing_output_is_not_overwritten(tiny_clip, sample_images, tmp_path):
    out = tmp_path / "r.csv"
    out.write_text("keep me", encoding="utf-8")
    result = classify(sample_images, "--labels", LABELS, "--model", tiny_clip, "--out", out)
    assert result.exit_code == 2
    assert out.read_text(encoding="utf-8") == "keep me"
    result = classify(sample_images, "--labels", LABELS, "--model", tiny_clip, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output


def test_animated_gif_records_its_frame_count(tiny_clip, tmp_path):
    frames = [Image.new("RGB", (32, 32), (i * 60, 0, 0)) for i in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    still = tmp_path / "still.png"
    frames[0].save(still)
    out = tmp_path / "r.jsonl"
    result = classify(gif, still, "--labels", LABELS, "--model", tiny_clip, "--out", out)
    assert result.exit_code == 0, result.output
    anim, single = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert anim["frames"] == 3 and anim["label"]
    assert single["frames"] is None


def test_unexpected_error_is_one_line_not_a_traceback(tiny_clip, sample_images, monkeypatch):
    from wwts.core import engine  # the package the CLI calls

    def boom(*args, **kwargs):
        raise RuntimeError("something\nunforeseen")

    monkeypatch.setattr(engine, "start", boom)
    monkeypatch.delenv("WWTS_DEBUG", raising=False)
    result = classify(sample_images, "--labels", LABELS, "--model", tiny_clip)
    assert result.exit_code == 1
    assert "unexpected error: RuntimeError: something unforeseen" in result.stderr
    assert "Traceback" not in result.output


def test_openai_clip_model_works_too(sample_images, tmp_path):
    from tests.tiny_models import build_tiny_clip

    model = build_tiny_clip(tmp_path / "tiny-clip")
    out = tmp_path / "r.jsonl"
    result = classify(sample_images, "--labels", "cat,dog,car", "--prompt", "a photo of a {}",
                      "--model", model, "--out", out, "--top-k", "3")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == sample_count(sample_images)
    for rec in records:
        assert abs(sum(t["score"] for t in rec["top_k"]) - 1.0) < 1e-4
        assert {t["label"] for t in rec["top_k"]} == {"cat", "dog", "car"}


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory) -> Path:
    from tests.tiny_models import build_tiny_siglip

    return build_tiny_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip")


def test_siglip_model_works_too(tiny_siglip, sample_images, tmp_path):
    out = tmp_path / "r.jsonl"
    result = classify(sample_images, "--labels", "cat,dog,car", "--prompt", "a photo of a {}.",
                      "--model", tiny_siglip, "--out", out)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == sample_count(sample_images) and not any(r["error"] for r in records)
    for rec in records:
        assert abs(sum(t["score"] for t in rec["top_k"]) - 1.0) < 1e-4


@pytest.mark.parametrize("family", ["chinese-clip", "clip", "siglip"])
def test_scores_are_the_softmax_of_the_models_own_logits(family, tiny_clip, tiny_siglip, sample_images, tmp_path):
    """wwts' text-once scoring gives what the model's forward gives for the same image and prompts,
    called as each model card shows (SigLIP: text padded to max_length, as it was trained)."""
    import torch
    from transformers import AutoModel, AutoProcessor

    from tests.tiny_models import IMAGE_SIZE, build_tiny_clip
    from wwts.core.input.decode import load_image

    folder = {"chinese-clip": tiny_clip, "siglip": tiny_siglip}.get(family) or build_tiny_clip(tmp_path / "clip")
    labels, template = (["人", "车", "猫"], "一张{}的照片。") if family == "chinese-clip" else (["cat", "dog", "car"], "a photo of a {}.")
    image = sample_images / "chelsea.png"
    out = tmp_path / "r.jsonl"
    # torch float32 pinned: the reference below is torch's forward in float32 (--dtype auto may pick bf16
    # on a CPU, --backend auto OpenVINO)
    result = classify(image, "--labels", ",".join(labels), "--prompt", template, "--model", folder, "--out", out,
                      "--dtype", "float32", "--backend", "torch")
    assert result.exit_code == 0, result.output
    rec = json.loads(out.read_text(encoding="utf-8"))
    ours = {t["label"]: t["score"] for t in rec["top_k"]}

    model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    # the pixels wwts decoded (reduced for the tiny models' input size), so only the scoring differs
    pixels = load_image(image, draft_size=IMAGE_SIZE).image
    padding = "max_length" if family == "siglip" else True
    inputs = processor(text=[template.format(x) for x in labels], images=pixels, padding=padding,
                       return_tensors="pt")
    with torch.no_grad():
        probs = model(**inputs).logits_per_image.softmax(dim=-1)[0]
    for label, p in zip(labels, probs.tolist()):
        assert abs(ours[label] - p) < 1e-5, (label, ours, probs)


LABELS_HOSTILE = "人,车,猫"
#: float32 and one torch thread: deterministic scores, and cheap on the 2-core test machine.
FAST = ("--labels", LABELS_HOSTILE, "--top-k", "3", "--dtype", "float32", "--threads", "1")


def noise(size=(64, 48)) -> Image.Image:
    """``noise_image`` at this module's default size."""
    return noise_image(size)


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


# --- options for hostile files: --follow-symlinks, --max-pixels, --allow-truncated; --out and CSV safety ---------


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


FAST_2_LABELS = ("--labels", "人,车", "--dtype", "float32", "--threads", "1")
needs_symlinks = pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")


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
    result = classify(folder, named, *FAST_2_LABELS, "--model", tiny_clip, "--out", out)
    no_traceback(result.output, *capfd.readouterr())
    assert result.exit_code == 3, result.output  # not 2: a link loop named on the command line is a record
    records = records_by_name(out)
    assert sorted(records) == ["dangling.jpg", "good.png", "loop.png", "named_loop.jpg"]
    assert records["dangling.jpg"]["error"] == "link: broken symbolic link: its target 'missing.jpg' does not exist"
    for name in ("loop.png", "named_loop.jpg"):
        assert records[name]["error"].startswith("link: symbolic link loop"), records[name]
    assert records["good.png"]["label"]
    assert "old_folder" in result.stderr and "broken symbolic link" in result.stderr


FAST_OUT = ("--labels", "人,车,狗", "--top-k", "2", "--dtype", "float32", "--threads", "1")


# --- a bad --out is found before the model loads, exit 2 ---------------------------------------------


def bad_outs(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "exists.csv").write_text("x")
    return {
        "parent-is-a-file": tmp_path / "file.txt" / "r.jsonl",
        "a-folder": tmp_path / "folder.jsonl",
        "exists-without-flags": tmp_path / "exists.csv",
        "unwritable-folder": Path("/proc/wwts-test-out.jsonl"),
        "bad-extension": tmp_path / "r.txt",
    }


@pytest.mark.parametrize("case", ["parent-is-a-file", "a-folder", "exists-without-flags", "unwritable-folder",
                                  "bad-extension"])
def test_a_bad_out_exits_2_before_the_model_loads(tiny_clip, six, tmp_path, load_spy, case):
    out = bad_outs(tmp_path)[case]
    if case == "unwritable-folder" and (not Path("/proc").is_dir() or os.access("/proc", os.W_OK)
                                        and _can_create(out)):
        pytest.skip("no unwritable folder here")
    result = classify(six, *FAST_OUT, "--model", tiny_clip, "--out", out)
    assert result.exit_code == 2, result.output
    one_error_line(result)
    assert load_spy == []


def _can_create(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except OSError:
        return False
    os.unlink(path)
    return True
