"""``wwts sort``: folders per label, a dry run by default, link / copy / move, collisions, the undo
log, and undoing an interrupted move."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wwts.cli.app import app
from wwts.core.output import read_results
from wwts.core.sort import apply, apply_plan, label_folders, plan_sort, safe_name, undo


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: file content, ``-> target`` for links, ``/`` for folders."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = p.relative_to(root).as_posix()
        out[key] = f"-> {os.readlink(p)}" if p.is_symlink() else "/" if p.is_dir() else p.read_text()
    return out


@pytest.fixture
def library(tmp_path, monkeypatch) -> Path:
    """Photos in two folders (one name in both) and a JSONL of their labels; cwd is ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    for rel in ("in/a/cat.jpg", "in/a/both.jpg", "in/b/cat.jpg", "in/b/dog.jpg", "in/b/bad.jpg"):
        Path(rel).parent.mkdir(parents=True, exist_ok=True)
        Path(rel).write_text(rel)
    records = [
        {"path": "in/a/cat.jpg", "label": "猫", "score": 0.9, "top_k": [], "error": None},
        {"path": "in/b/cat.jpg", "label": "猫", "score": 0.8, "top_k": [], "error": None},
        {"path": "in/b/dog.jpg", "label": "狗/犬", "score": 0.7, "top_k": [], "error": None},
        {"path": "in/a/both.jpg", "label": "猫", "score": 0.6, "top_k": [], "error": None,
         "labels": [{"label": "猫", "score": 0.6}, {"label": "狗/犬", "score": 0.55}]},
        {"path": "in/b/bad.jpg", "label": None, "score": None, "top_k": [], "error": "truncated: cut short"},
    ]
    Path("r.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return tmp_path


def sort(*args):
    return CliRunner().invoke(app, ["sort", *map(str, args)])


def test_safe_names():
    assert safe_name("猫") == "猫"
    assert safe_name("a/b") == "a_b" and safe_name("a\\b:c*?") == "a_b_c__"
    assert safe_name("..") == "_" and safe_name(".") == "_" and safe_name("") == "_" and safe_name("x\x00y") == "x_y"
    assert safe_name("CON") == "_CON" and safe_name("nul.txt") == "_nul.txt" and safe_name("com1") == "_com1"
    assert safe_name("dots. ") == "dots" and len(safe_name("长" * 200).encode()) <= 240
    assert label_folders(["a/b", "a_b", "Cat", "cat"]) == {"a/b": "a_b", "a_b": "a_b (2)", "Cat": "Cat", "cat": "cat (2)"}


def test_dry_run_changes_nothing(library):
    before = tree(library)
    done = sort("r.jsonl", "--into", "sorted", "--move")
    assert done.exit_code == 0, done.output
    assert tree(library) == before
    assert "move  " in done.output and "dry run: nothing was changed" in done.output
    assert "in/b/bad.jpg: error record" in done.output


@pytest.mark.parametrize("mode", ["link", "copy"])
def test_link_and_copy(library, mode):
    before = tree(library / "in")
    done = sort("r.jsonl", "--into", "sorted", f"--{mode}", "--yes")
    assert done.exit_code == 0, done.output
    got = tree(library / "sorted")
    assert tree(library / "in") == before
    assert {k for k in got if not k.startswith(".wwts-sort")} == {
        "猫", "猫/cat.jpg", "猫/cat (2).jpg", "猫/both.jpg", "狗_犬", "狗_犬/dog.jpg", "狗_犬/both.jpg"}
    if mode == "link":
        assert got["猫/cat (2).jpg"] == f"-> {library / 'in/b/cat.jpg'}"
    else:
        assert got["猫/cat (2).jpg"] == "in/b/cat.jpg" and not (library / "sorted/猫/cat.jpg").is_symlink()
    again = sort("r.jsonl", "--into", "sorted", f"--{mode}", "--yes").output  # sorting twice adds nothing
    assert again.count("keep ") == 5 and "sorted: 0 changes" in again


def test_move_never_overwrites_and_undo_puts_back(library):
    (library / "sorted/猫").mkdir(parents=True)
    (library / "sorted/猫/cat.jpg").write_text("someone else's cat")
    before = tree(library / "in")
    done = sort("r.jsonl", "--into", "sorted", "--move", "--yes")
    assert done.exit_code == 0, done.output
    got = tree(library / "sorted")
    assert got["猫/cat.jpg"] == "someone else's cat"
    assert got["猫/cat (2).jpg"] == "in/a/cat.jpg" and got["猫/cat (3).jpg"] == "in/b/cat.jpg"
    assert got["狗_犬/both.jpg"] == "-> ../猫/both.jpg" and (library / "sorted/狗_犬/both.jpg").read_text() == "in/a/both.jpg"
    assert set(tree(library / "in")) == {"a", "b", "b/bad.jpg"}
    log = done.output.split("wwts sort --undo ")[1].split()[0]
    undone = sort("--undo", log)
    assert undone.exit_code == 0, undone.output
    assert tree(library / "in") == before
    assert {k for k in tree(library / "sorted") if ".wwts-sort" not in k} == {"猫", "猫/cat.jpg"}
    assert sort("--undo", log).exit_code == 2  # already undone


def test_interrupted_move_can_be_undone(library, monkeypatch):
    """Ctrl-C (or a crash) while the third photo is half moved: linked at the target, not yet
    unlinked at the source. The log names it; undo restores every photo."""
    before = tree(library / "in")
    real_move, calls = apply._move, []

    def move_then_die(source, target):
        calls.append(source)
        if len(calls) == 3:
            os.link(source, target)
            raise KeyboardInterrupt
        real_move(source, target)

    monkeypatch.setattr(apply, "_move", move_then_die)
    plan = plan_sort(read_results(Path("r.jsonl")), Path("sorted"), "move")
    with pytest.raises(KeyboardInterrupt):
        apply_plan(plan)
    [log] = list(Path("sorted").glob(".wwts-sort-*.jsonl"))
    with open(log, "a", encoding="utf-8") as fh:
        fh.write('{"op": "move", "sour')  # and the process died while logging the next one
    assert tree(library / "in") != before
    report = undo(log)
    assert not report.failed
    assert tree(library / "in") == before
    assert [p for p in Path("sorted").rglob("*") if ".wwts-sort" not in p.name] == []


def test_sort_usage_errors(library):
    assert sort("r.jsonl", "--into", "s", "--copy", "--move").exit_code == 2
    assert sort("r.jsonl").exit_code == 2
    Path("c.jsonl").write_text(json.dumps({"path": "in/a/cat.jpg", "caption": "a cat", "error": None}) + "\n")
    assert "holds captions" in sort("c.jsonl", "--into", "s").output
