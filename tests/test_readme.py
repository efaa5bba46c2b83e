"""The README's commands exist, and ``wwts --help`` lists exactly the commands that exist."""

from __future__ import annotations

import re
import subprocess
import sys

import typer
from typer.testing import CliRunner

from tests.conftest import ROOT
from wwts.cli.app import app

runner = CliRunner()
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def registered_commands() -> set[str]:
    """Commands and command groups (``wwts store info``: the group ``store``)."""
    return ({c.name or c.callback.__name__ for c in app.registered_commands}
            | {g.name or g.typer_instance.info.name for g in app.registered_groups})


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in registered_commands():
        assert name in result.output
    assert registered_commands() == {"classify", "caption", "doctor", "search", "embed", "store", "conversions",
                                     "report", "sort"}


def test_readme_wwts_commands_exist():
    used = set(re.findall(r"^\s*wwts (\w+)", README, flags=re.M))
    assert used, "the README shows no wwts command"
    assert used <= registered_commands(), used - registered_commands()


def test_readme_shows_every_command():
    shown = set(re.findall(r"\bwwts (\w+)", README))
    assert registered_commands() <= shown, registered_commands() - shown


def command_flags(command: str) -> set[str]:
    """Every option spelling the command accepts, from click itself (the rendered --help wraps
    and truncates with the terminal width, e.g. COLUMNS=40)."""
    click_command = typer.main.get_command(app).commands[command]
    return {flag for param in click_command.params for flag in (*param.opts, *param.secondary_opts)}


def test_readme_options_exist():
    for command in registered_commands():
        flags = command_flags(command)
        for option in re.findall(rf"wwts {command}[^\n`]*", README):
            for flag in re.findall(r"(--[a-z][a-z0-9-]+)", option):
                assert flag in flags, f"{flag} (README, wwts {command}) is not an option"


def test_readme_make_targets_exist():
    targets = set(re.findall(r"^([a-z][\w-]*):", MAKEFILE, flags=re.M))
    used = set(re.findall(r"make ([a-z][\w-]*)", README))
    assert {"test", "demo"} <= used
    assert used <= targets, used - targets


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci and "make test" in README


def test_help_does_not_import_torch():
    code = ("import sys; from wwts.cli.app import app; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_every_option_the_readme_mentions_exists():
    """Option tables and prose too, not only full command lines; other tools' flags are listed."""
    others = {"--local-dir"}  # hf download (huggingface_hub CLI)
    known = set().union(*(command_flags(c) for c in registered_commands()))
    group = typer.main.get_command(app)  # wwts --version, and -h / --help on every command
    known |= {flag for param in group.params for flag in param.opts} | set(group.context_settings["help_option_names"])
    assert {"--labels", "--lang", "--json", "--resume"} <= known
    mentioned = set(re.findall(r"`[^`\n]*?(--[a-z][a-z0-9-]+)", README))
    assert mentioned - others <= known, sorted(mentioned - others - known)


def test_help_shows_the_defaults_that_are_not_plain_values():
    wide = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}
    classify_help = runner.invoke(app, ["classify", "--help"], env=wide).output
    for text in ("一张{}的照片。", "OFA-Sys/chinese-clip-vit-base-patch16", "per device", "physical cores",
                 "89478485"):
        assert text in classify_help, text
    caption_help = runner.invoke(app, ["caption", "--help"], env=wide).output
    assert "Salesforce/blip-image-captioning-base" in caption_help and "Qwen/Qwen3-VL-2B-Instruct" in caption_help
