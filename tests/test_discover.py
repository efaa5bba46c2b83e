"""Tests of core.discover: order, recursion, extensions, path spelling, symlinks, odd entries."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from wwts.core.errors import UsageError
from wwts.core.input import AVIF_SUPPORTED, HEIF_SUPPORTED, IMAGE_EXTENSIONS, discover, is_image_name
import time
import tracemalloc
from PIL import Image
from tests.helpers import encoded
from wwts.core.engine import plan as engine

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "exif-samples"
needs_symlinks = pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")


def make(root: Path, *names: str) -> None:
    """Create empty files (folders as needed); discovery never reads them."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def found(*inputs, **kwargs) -> list[str]:
    return [p.as_posix() for p in discover([Path(i) for i in inputs], **kwargs)]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A small photo folder; the working directory is tmp_path so inputs can be relative."""
    make(
        tmp_path / "photos",
        "b.jpg",
        "a.PNG",
        "notes.txt",
        "c.Jpeg",
        "z/deep/9.webp",
        "m/2.gif",
        "m/1.tif",
        "A/0.bmp",
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_extensions():
    for ext in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"):
        assert ext in IMAGE_EXTENSIONS
    assert (".heic" in IMAGE_EXTENSIONS) is HEIF_SUPPORTED
    assert (".heif" in IMAGE_EXTENSIONS) is HEIF_SUPPORTED
    assert (".avif" in IMAGE_EXTENSIONS) is AVIF_SUPPORTED
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)
    assert is_image_name("IMG_0001.JPG") and is_image_name("x.TiFf")
    assert not is_image_name("jpg") and not is_image_name("x.jpg.txt") and not is_image_name(".jpg")


def test_order_files_sorted_then_subfolders_depth_first(tree):
    assert found("photos") == [
        "photos/a.PNG",
        "photos/b.jpg",
        "photos/c.Jpeg",
        "photos/A/0.bmp",
        "photos/m/1.tif",
        "photos/m/2.gif",
        "photos/z/deep/9.webp",
    ]


def test_not_recursive(tree):
    assert found("photos", recursive=False) == ["photos/a.PNG", "photos/b.jpg", "photos/c.Jpeg"]


def test_relative_inputs_give_relative_paths_absolute_give_absolute(tree):
    relative = list(discover([Path("photos/m")]))
    assert relative == [Path("photos/m/1.tif"), Path("photos/m/2.gif")]
    assert not any(p.is_absolute() for p in relative)
    absolute = list(discover([tree / "photos" / "m"]))
    assert absolute == [tree / "photos/m/1.tif", tree / "photos/m/2.gif"]


def test_explicit_file_yielded_whatever_its_extension(tree):
    assert found("photos/notes.txt") == ["photos/notes.txt"]


def test_inputs_in_given_order_and_overlaps_yielded_once(tree):
    assert found("photos/m", "photos/b.jpg", "photos", "photos/m/2.gif") == [
        "photos/m/1.tif",
        "photos/m/2.gif",
        "photos/b.jpg",
        "photos/a.PNG",
        "photos/c.Jpeg",
        "photos/A/0.bmp",
        "photos/z/deep/9.webp",
    ]


def test_same_folder_twice_spelled_differently(tree):
    assert found("photos/m", "./photos/../photos/m") == ["photos/m/1.tif", "photos/m/2.gif"]


def test_nonexistent_input_raises_before_anything_is_yielded(tree):
    gen = discover([Path("photos"), Path("nope")])
    with pytest.raises(UsageError, match="nope"):
        next(gen)


def test_streams_one_folder_at_a_time(tree):
    gen = discover([Path("photos")])
    assert next(gen) == Path("photos/a.PNG")
    # a file added to a folder not listed yet still shows up: the walk is lazy
    make(tree / "photos", "z/deep/8.jpg")
    assert [p.as_posix() for p in gen][-2:] == ["photos/z/deep/8.jpg", "photos/z/deep/9.webp"]


def test_directory_named_like_image_is_walked_not_yielded(tree):
    make(tree / "photos", "album.jpg/inner.jpg")
    result = found("photos")
    assert "photos/album.jpg" not in result
    assert "photos/album.jpg/inner.jpg" in result


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_and_socket_named_like_images_are_skipped(tree):
    import socket

    os.mkfifo(tree / "photos" / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind("photos/sock.png")  # relative: AF_UNIX paths are limited to ~100 bytes
        result = found("photos")
    finally:
        sock.close()
    assert "photos/pipe.jpg" not in result and "photos/sock.png" not in result
    assert "photos/b.jpg" in result


@needs_symlinks
def test_folder_symlink_not_followed_by_default(tree):
    os.symlink("m", tree / "photos" / "link_to_m")
    assert found("photos") == found("photos", follow_symlinks=False)
    assert not any("link_to_m" in p for p in found("photos"))


@needs_symlinks
def test_symlink_loop_terminates_and_yields_each_file_once(tree):
    os.symlink("..", tree / "photos" / "m" / "up")  # photos/m/up -> photos: a loop
    os.symlink(".", tree / "photos" / "self")
    without = found("photos")
    with_follow = found("photos", follow_symlinks=True)
    assert without == with_follow  # every file is reached through real folders first
    assert len(with_follow) == len(set(with_follow)) == 7


@needs_symlinks
def test_followed_symlink_reaches_new_files_inside_root(tree):
    make(tree / "photos", "z/elsewhere/e.jpg")
    os.symlink(os.path.join("z", "elsewhere"), tree / "photos" / "aa_link")
    # sorted first, the link is walked before the real folder, and the real one is not re-walked
    result = found("photos", follow_symlinks=True)
    assert "photos/aa_link/e.jpg" in result
    assert "photos/z/elsewhere/e.jpg" not in result
    assert "photos/aa_link/e.jpg" not in found("photos")
    assert "photos/z/elsewhere/e.jpg" in found("photos")


@needs_symlinks
def test_followed_symlink_never_leaves_the_input_root(tree):
    make(tree, "outside/secret.jpg")
    os.symlink(tree / "outside", tree / "photos" / "escape")
    assert not any("secret" in p for p in found("photos", follow_symlinks=True))


@needs_symlinks
def test_file_symlinks_are_yielded_once_and_broken_ones_passed_on(tree):
    os.symlink("b.jpg", tree / "photos" / "alias.jpg")  # same file as b.jpg: yielded once
    os.symlink("gone.jpg", tree / "photos" / "dangling.jpg")
    os.symlink("loop.jpg", tree / "photos" / "loop.jpg")  # a link to itself: ELOOP
    result = found("photos", recursive=False)
    # broken links with image names are yielded, so decoding gives each a "link" record
    assert result == ["photos/a.PNG", "photos/alias.jpg", "photos/c.Jpeg", "photos/dangling.jpg",
                      "photos/loop.jpg"]
    assert found("photos/dangling.jpg") == ["photos/dangling.jpg"]


@needs_symlinks
def test_broken_links_named_on_the_command_line_are_yielded_not_fatal(tree):
    os.symlink("loop.jpg", tree / "loop.jpg")
    os.symlink("a.jpg", tree / "b.jpg")
    os.symlink("b.jpg", tree / "a.jpg")  # a two-link loop
    os.symlink("gone", tree / "gone.jpg")
    assert found("loop.jpg", "a.jpg", "gone.jpg", "photos/b.jpg") == [
        "loop.jpg", "a.jpg", "gone.jpg", "photos/b.jpg"]


@needs_symlinks
def test_broken_links_without_image_names_are_warned_about(tree, caplog):
    os.symlink("gone", tree / "photos" / "was_a_folder")
    os.symlink("self", tree / "photos" / "self")
    with caplog.at_level(logging.WARNING, logger="wwts.core.input.discover"):
        result = found("photos", recursive=False, follow_symlinks=True)
    assert result == ["photos/a.PNG", "photos/b.jpg", "photos/c.Jpeg"]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "photos/was_a_folder" in warned and "photos/self" in warned


@needs_symlinks
def test_symlinked_input_folder_is_walked(tree):
    os.symlink(tree / "photos" / "m", tree / "mlink")
    assert found("mlink") == ["mlink/1.tif", "mlink/2.gif"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_skipped_with_warning(tree, caplog):
    locked = tree / "photos" / "m"
    locked.chmod(0)
    try:
        with caplog.at_level(logging.WARNING, logger="wwts.core.input.discover"):
            result = found("photos")
    finally:
        locked.chmod(0o755)
    assert not any(p.startswith("photos/m/") for p in result)
    assert "photos/z/deep/9.webp" in result
    assert any("photos" in r.getMessage() and "m" in r.getMessage() for r in caplog.records)


def test_folder_vanishing_during_the_walk_is_skipped(tree, caplog):
    gen = discover([Path("photos")])
    next(gen)
    (tree / "photos" / "m" / "1.tif").unlink()
    (tree / "photos" / "m" / "2.gif").unlink()
    (tree / "photos" / "m").rmdir()
    with caplog.at_level(logging.WARNING, logger="wwts.core.input.discover"):
        rest = [p.as_posix() for p in gen]
    assert rest[-1] == "photos/z/deep/9.webp"
    assert not any("photos/m/" in p for p in rest)
    assert caplog.records  # the vanished folder was reported


def test_real_sample_tree():
    if not SAMPLES.exists():
        pytest.skip(f"test data not present: {SAMPLES}")
    result = list(discover([SAMPLES]))
    expected = {p for p in SAMPLES.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
    assert set(result) == expected and len(result) == len(expected)
    assert not any(p.name.startswith("README") for p in result)
    top = [p for p in result if p.parent == SAMPLES / "jpg"]
    assert [p.name for p in top] == sorted(p.name for p in top)
    # jpg/ files come before any of its subfolders' files
    first_sub = next(i for i, p in enumerate(result) if p.parent.parent == SAMPLES / "jpg")
    assert all(p.parent == SAMPLES / "jpg" for p in result[first_sub - len(top) : first_sub])


def test_hidden_files_and_folders_skipped_unless_asked(tree):
    # What macOS leaves on exFAT/SMB volumes and what photo tools keep in dot-folders.
    make(tree / "photos", "._b.jpg", ".thumbnails/t.jpg", "m/.cache/x.png", ".DS_Store")
    expected = ["photos/a.PNG", "photos/b.jpg", "photos/c.Jpeg", "photos/A/0.bmp",
                "photos/m/1.tif", "photos/m/2.gif", "photos/z/deep/9.webp"]
    assert found("photos") == expected
    with_hidden = found("photos", include_hidden=True)
    assert set(with_hidden) == set(expected) | {
        "photos/._b.jpg", "photos/.thumbnails/t.jpg", "photos/m/.cache/x.png"}
    assert with_hidden.index("photos/._b.jpg") < with_hidden.index("photos/a.PNG")  # code-point order


def test_hidden_inputs_named_explicitly_are_taken(tree):
    make(tree / ".album", "p.jpg", ".q.jpg")
    make(tree, ".single.jpg")
    assert found(".album", ".single.jpg") == [".album/p.jpg", ".single.jpg"]


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
