"""The decode pool: order of results, shutdown, and surviving a decoder that kills its process."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import crashing_load, pid_load
from wwts.core.input.pool import DecodePool
from wwts.core.errors import ImageError


def _heif_like(tmp_path: Path, name: str, color=(200, 30, 30)) -> Path:
    """A real image file with a .heic name (PNG inside: Pillow identifies it by content)."""
    p = tmp_path / name
    Image.new("RGB", (40, 20), color).save(p, format="PNG")
    return p


def test_results_in_submission_order(sample_images):
    paths = sorted(sample_images.glob("*.jpg")) + sorted(sample_images.glob("*.png"))
    with DecodePool(3, draft_size=64) as pool:
        futures = [pool.submit(p) for p in paths]
        decoded = [f.result().decoded for f in futures]
    for p, d in zip(paths, decoded):
        assert (d.width, d.height) == Image.open(p).size
        assert d.image.mode == "RGB"


def test_shutdown_stops_threads_and_cancels_pending(sample_images):
    before = {t.name for t in threading.enumerate()}
    pool = DecodePool(1)
    futures = [pool.submit(p) for p in sorted(sample_images.iterdir())[:9] * 20]
    pool.shutdown()
    pool.shutdown()  # twice is harmless
    assert any(f.cancelled() for f in futures)
    assert all(f.done() for f in futures)
    alive = {t.name for t in threading.enumerate() if t.name.startswith("wwts-decode")}
    assert not (alive - before)


def test_errors_come_back_as_image_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"<html>not an image</html>")
    with DecodePool(2) as pool:
        with pytest.raises(ImageError) as info:
            pool.submit(bad).result()
    assert info.value.category == "unidentified"


def test_a_crashing_decoder_costs_one_record(tmp_path):
    good1 = _heif_like(tmp_path, "a.heic")
    crash = _heif_like(tmp_path, "crash.heic")
    good2 = _heif_like(tmp_path, "z.heic", (10, 200, 10))
    with DecodePool(3, isolated_load=crashing_load) as pool:
        futures = [pool.submit(p) for p in (good1, crash, good2)]
        first = futures[0].result().decoded
        with pytest.raises(ImageError) as info:
            futures[1].result()
        last = futures[2].result().decoded
        after = pool.submit(good1).result().decoded  # the pool works again after the crash
    assert info.value.category == "crashed"
    assert first.image.getpixel((0, 0)) == (200, 30, 30)
    assert last.image.getpixel((0, 0)) == (10, 200, 10)
    assert after.width == 40


def test_real_heic_decodes_in_the_worker_process(exif_samples):
    heic = exif_samples / "heic" / "mobile" / "iphone_13_pro_max.HEIC"
    if not heic.exists():
        pytest.skip("no sample HEIC")
    with DecodePool(1, draft_size=224) as pool:
        d = pool.submit(heic).result().decoded
    assert d.image.mode == "RGB" and d.height > d.width  # portrait after orientation


def test_heif_decodes_spread_over_as_many_processes_as_threads(tmp_path):
    paths = [_heif_like(tmp_path, f"{i}.heic") for i in range(6)]
    with DecodePool(3, isolated_load=pid_load) as pool:
        pids = {f.result().decoded.note for f in [pool.submit(p) for p in paths]}
    assert len(pids) > 1 and str(os.getpid()) not in pids


def test_several_crashes_among_parallel_decodes_blame_only_the_crashing_files(tmp_path):
    names = ["a.heic", "crash1.heic", "b.heic", "c.heic", "crash2.heic", "d.heic", "e.heic"]
    paths = [_heif_like(tmp_path, n) for n in names]
    outcome = {}
    with DecodePool(3, isolated_load=crashing_load) as pool:
        for path, future in [(p, pool.submit(p)) for p in paths]:
            try:
                outcome[path.name] = future.result().decoded.width
            except ImageError as exc:
                outcome[path.name] = exc.category
    assert outcome == {n: "crashed" if n.startswith("crash") else 40 for n in names}


def test_an_image_error_in_the_worker_keeps_its_category(tmp_path):
    """An ImageError comes back from a worker process with its category: it must not read as a crash."""
    bad = tmp_path / "bad.heic"
    bad.write_bytes(b"not a HEIC file at all")
    with DecodePool(1) as pool:
        with pytest.raises(ImageError) as info:
            pool.submit(bad).result()
    assert info.value.category == "unidentified"


def test_tiff_decodes_in_a_worker_by_name_or_content(tmp_path):
    named = tmp_path / "a.tif"
    Image.new("RGB", (40, 20)).save(named, format="TIFF")
    disguised = tmp_path / "b.jpg"
    Image.new("RGB", (40, 20)).save(disguised, format="TIFF")
    plain = tmp_path / "c.jpg"
    Image.new("RGB", (40, 20)).save(plain, format="JPEG")
    with DecodePool(2, isolated_load=pid_load) as pool:
        notes = [pool.submit(p).result().decoded.note for p in (named, disguised, plain)]
    assert notes[0] and notes[1] and str(os.getpid()) not in notes[:2]  # decoded by pid_load
    assert notes[2] is None  # in a thread of this process


def test_what_a_native_decoder_writes_to_stderr_becomes_the_note(tmp_path, capfd):
    path = tmp_path / "fax.tif"
    im = Image.new("1", (64, 64), 1)
    for x in range(0, 64, 3):
        im.putpixel((x, x // 2), 0)
    im.save(path, compression="group4")
    with Image.open(path) as opened:
        start, length = opened.tag_v2[273][0], opened.tag_v2[279][0]
    data = bytearray(path.read_bytes())
    for i in range(start + 2, start + length):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))
    capfd.readouterr()
    with DecodePool(1) as pool:
        decoded = pool.submit(path).result().decoded
    out, err = capfd.readouterr()
    assert "Fax4Decode" not in out + err
    assert decoded.note.startswith("decoder said: Fax4Decode: Bad code word")


def test_stderr_summary_is_one_line_of_distinct_lines():
    from wwts.core.input.pool import _summarise

    assert _summarise("") == ""
    assert _summarise("a: x\na: x\n\nb:  y\nc\nd\n") == "decoder said: a: x; b: y; c (+1 more)"


def test_transform_runs_on_the_decode_thread_and_gives_a_sample(sample_images, tmp_path):
    from wwts.core.input.pool import Sample

    path = sorted(sample_images.glob("*.jpg"))[0]
    threads = []

    def transform(image):
        threads.append(threading.current_thread().name)
        if image.size == (7, 7):
            raise ValueError("no 7x7 images")
        return ("inputs", image.size)

    seven = tmp_path / "seven.png"
    Image.new("RGB", (7, 7)).save(seven)
    with DecodePool(1, transform=transform) as pool:
        sample = pool.submit(path).result()
        with pytest.raises(ImageError) as info:
            pool.submit(seven).result()
    assert isinstance(sample, Sample) and sample.inputs[0] == "inputs"
    assert sample.decoded.image is None  # only the inputs wait in the window
    assert (sample.decoded.width, sample.decoded.height) == Image.open(path).size
    assert info.value.category == "preprocess" and "no 7x7 images" in str(info.value)
    assert all(name.startswith("wwts-decode") for name in threads)
