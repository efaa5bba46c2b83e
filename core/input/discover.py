"""Find the image files under the user's inputs, as a stream of paths in a stable order.

``discover`` walks each input with ``os.scandir`` (one folder's listing in memory at a time),
depth-first: the matching files of a folder sorted by name, then its subfolders in sorted order.
It never opens a file, so a FIFO or socket named ``x.jpg`` cannot hang it; decoding is
the job of ``decode.load_image``. Hidden entries (names starting with ``.``, and on Windows the hidden
attribute) are skipped in folder walks unless asked for, as ``fd`` and ``ripgrep`` do: macOS writes
an AppleDouble ``._IMG_0001.jpg`` beside every photo copied to a FAT/exFAT/SMB volume, and without
this rule each one would come back as a failed image.

Symbolic links, one rule: a link to a file is taken like the file (once, however many names
reach it). A broken link (its target does not exist, or a link loop) is yielded when it is named
on the command line or, in a folder walk, when its name has an image extension, so that decoding
gives it an error record of category ``link``; other broken links met in a walk are logged as a
warning (they may have pointed at folders). Folder links are followed only with
``follow_symlinks`` (within the input folder, each folder once); a folder link named on the
command line is always walked.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import UsageError
from .decode import AVIF_SUPPORTED, HEIF_SUPPORTED

logger = logging.getLogger(__name__)

#: File extensions (lower case, with the dot) that folder walks pick up. HEIF/HEIC and AVIF are
#: included only when ``decode.load_image`` can decode them (pillow-heif / Pillow built with libavif).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    | ({".heic", ".heif"} if HEIF_SUPPORTED else set())
    | ({".avif"} if AVIF_SUPPORTED else set())
)


def is_image_name(name: str) -> bool:
    """True when ``name`` ends with one of ``IMAGE_EXTENSIONS``, compared case-insensitively."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def discover(
    inputs: Sequence[Path],
    *,
    recursive: bool = True,
    follow_symlinks: bool = False,
    include_hidden: bool = False,
) -> Iterator[Path]:
    """Yield the image files named by or found under ``inputs``, each once, in a stable order.

    Args:
        inputs: files and folders, processed in the order given. A file named explicitly is
            yielded whatever its extension or type (the user asked for it; ``load_image`` reports
            what is wrong with it). A folder is walked and only files whose extension is in
            ``IMAGE_EXTENSIONS`` (any letter case) are yielded.
        recursive: descend into subfolders; ``False`` takes only a folder's own files.
        follow_symlinks: descend into symlinked folders. A link whose target lies outside the
            input folder it was found under (after ``os.path.realpath``) is skipped, and a folder
            already walked (same ``st_dev``/``st_ino``) is not walked again, so link loops end.
            Symlinks to files are always yielded; symlinked folders are skipped when ``False``.
            Broken links (dangling, or loops) are yielded when named, or found in a walk with an
            image extension; loading them gives an ``ImageError`` of category ``link``. Other
            broken links in a walk are logged as warnings and skipped.
        include_hidden: also walk hidden folders and take hidden files (see ``is_hidden``).
            Inputs named explicitly are taken whether hidden or not.

    Yields:
        ``Path(input) / relative_path``: paths as the user would type them, relative when the
        input was relative. Within a folder: its matching regular files sorted by name (code-point
        order), then each subfolder in sorted order, depth-first. A file reached twice (overlapping
        inputs, hard links, file symlinks) is yielded the first time only.

    Raises:
        UsageError: an input does not exist (and is no broken link) or cannot be examined;
            checked for all inputs before the first path is yielded. Unreadable folders met
            during the walk are skipped with a logged warning instead.
    """
    roots: list[tuple[Path, os.stat_result | None]] = []
    for raw in inputs:
        path = Path(raw)
        try:
            roots.append((path, os.stat(path)))
        except OSError as exc:
            if _broken_link_error(exc) and (os.path.islink(path) or exc.errno == errno.ELOOP):
                roots.append((path, None))  # broken link named explicitly: decoding says "link: ..."
                continue
            if isinstance(exc, FileNotFoundError):
                raise UsageError(f"input path does not exist: {path}") from None
            raise UsageError(f"cannot access input path {path}: {exc.strerror or exc}") from None

    seen_files: set[tuple] = set()
    seen_dirs: set[tuple] = set()
    named: set[str] = set()  # explicit inputs that cannot be stat'ed, by spelling
    for path, st in roots:
        if st is None:
            if str(path) not in named:
                named.add(str(path))
                yield path
        elif stat.S_ISDIR(st.st_mode):
            yield from _walk(path, st, recursive, follow_symlinks, include_hidden, seen_files, seen_dirs)
        elif _first_time(seen_files, _key(st, path)):
            yield path


def _walk(
    root: Path,
    root_stat: os.stat_result,
    recursive: bool,
    follow_symlinks: bool,
    include_hidden: bool,
    seen_files: set[tuple],
    seen_dirs: set[tuple],
) -> Iterator[Path]:
    """Depth-first pre-order walk of one input folder with an explicit stack (no recursion limit)."""
    root_real = os.path.realpath(root) if follow_symlinks else ""
    if not _first_time(seen_dirs, _key(root_stat, root)):
        return
    stack = [root]
    while stack:
        folder = stack.pop()
        files, subdirs = _list_folder(folder, recursive, follow_symlinks, include_hidden, root_real)
        base = os.fspath(folder)
        for name in files:
            try:  # follows a file symlink; dedupe by what it points to
                key = _file_key(os.path.join(base, name))
            except OSError as exc:
                logger.warning("skipping %s: %s", folder / name, exc.strerror or exc)
                continue
            if _first_time(seen_files, key):
                yield folder / name
        del files
        children = []
        for name in subdirs:
            path = folder / name
            try:
                key = _identity(path)
            except OSError as exc:
                logger.warning("skipping folder %s: %s", path, exc.strerror or exc)
                continue
            if _first_time(seen_dirs, key):
                children.append(path)
            else:
                logger.debug("not walking %s again (already walked, or a link loop)", path)
        stack.extend(reversed(children))


def _list_folder(
    folder: Path, recursive: bool, follow_symlinks: bool, include_hidden: bool, root_real: str
) -> tuple[list[str], list[str]]:
    """Names of one folder's matching files and of the subfolders to descend into, both sorted.

    Files are regular files (or links to them) only: ``DirEntry.is_file`` is false for FIFOs,
    sockets and devices, which are therefore never opened. Only names are kept (not the
    ``DirEntry`` objects, nor their cached ``stat`` results): a folder of 100,000 photos then costs
    its names, about 60 bytes each, until the walk leaves it.
    """
    files: list[str] = []
    subdirs: list[str] = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                try:
                    if not include_hidden and is_hidden(entry):
                        logger.debug("skipping hidden %s", folder / entry.name)
                    elif entry.is_dir(follow_symlinks=False):
                        if recursive:
                            subdirs.append(entry.name)
                    elif entry.is_symlink() and _is_broken_link(entry.path):
                        if is_image_name(entry.name):
                            files.append(entry.name)  # decoding gives it a "link" error record
                        else:
                            logger.warning("skipping broken symbolic link %s (its target does not exist, "
                                           "or a link loop)", folder / entry.name)
                    elif entry.is_symlink() and entry.is_dir():
                        if recursive and follow_symlinks and _inside(entry.path, root_real):
                            subdirs.append(entry.name)
                        else:
                            logger.debug("not following folder link %s", folder / entry.name)
                    elif entry.is_file() and is_image_name(entry.name):
                        files.append(entry.name)
                except OSError as exc:  # an entry that vanished or cannot be examined
                    logger.warning("skipping %s: %s", folder / entry.name, exc.strerror or exc)
    except OSError as exc:  # PermissionError, or the folder vanished during the walk
        logger.warning("skipping folder %s: %s", folder, exc.strerror or exc)
        return [], []
    files.sort()
    subdirs.sort()
    return files, subdirs


def is_hidden(entry: os.DirEntry) -> bool:
    """True for a name starting with ``.`` (Unix convention, also macOS ``._*`` AppleDouble files)
    or, on Windows, an entry with ``FILE_ATTRIBUTE_HIDDEN`` (read from the cached ``DirEntry``
    stat, no extra system call there).

    Raises:
        OSError: on Windows, the entry vanished before its attributes could be read.
    """
    if entry.name.startswith("."):
        return True
    if os.name == "nt":
        attrs = getattr(entry.stat(follow_symlinks=False), "st_file_attributes", 0)
        return bool(attrs & stat.FILE_ATTRIBUTE_HIDDEN)
    return False


def _inside(link: str, root_real: str) -> bool:
    """True when the link's resolved target is ``root_real`` or below it."""
    target = os.path.realpath(link)
    try:
        if os.path.commonpath([target, root_real]) == root_real:
            return True
    except ValueError:  # Windows: different drives
        pass
    logger.info("not following %s: it points outside the input folder (%s)", link, target)
    return False


def _broken_link_error(exc: OSError) -> bool:
    """True for the ``stat`` errors of a broken link: target missing, or a loop (``ELOOP``)."""
    return isinstance(exc, (FileNotFoundError, NotADirectoryError)) or exc.errno == errno.ELOOP


def _is_broken_link(path: str) -> bool:
    """True when following ``path`` (known to be a symlink) fails: dangling, or a link loop."""
    try:
        os.stat(path)
    except OSError as exc:
        return _broken_link_error(exc)
    return False


def _file_key(path: str) -> tuple:
    """``_identity`` of a file found in a walk; for a broken link, the identity of the link itself.

    Raises:
        OSError: the entry vanished or cannot be examined.
    """
    try:
        return _identity(path)
    except OSError as exc:
        if not (_broken_link_error(exc) and os.path.islink(path)):
            raise
        return ("link", *_key(os.lstat(path), path))


def _identity(path: str | Path) -> tuple:
    """Identity of what ``path`` names (links followed), see ``_key``.

    Raises:
        OSError: the entry vanished or cannot be examined.
    """
    return _key(os.stat(path), path)


def _key(st: os.stat_result, path: str | Path) -> tuple:
    """``(st_dev, st_ino)``; the resolved path on file systems that report no inode numbers."""
    if st.st_ino == 0:
        return ("path", os.path.normcase(os.path.realpath(path)))
    return (st.st_dev, st.st_ino)


def _first_time(seen: set[tuple], key: tuple) -> bool:
    """Record ``key``; True when it was not recorded before."""
    if key in seen:
        return False
    seen.add(key)
    return True
