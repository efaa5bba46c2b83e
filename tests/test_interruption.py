"""The interruption suite, end to end: Ctrl-C / SIGTERM stop a run without losing a result, print the
command that resumes it, and the resumed run completes it; a second Ctrl-C exits at once and leaves no
decode worker behind. Each runs the installed ``wwts`` script in a subprocess on the session's tiny
random Chinese-CLIP (``tiny_clip``)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import encoded, no_traceback, noise_image, read_jsonl
from wwts.core.input.decode import AVIF_SUPPORTED


WWTS = Path(sys.executable).with_name("wwts")
LABELS = "人,车,猫"
#: float32 and one torch thread: deterministic scores, and cheap on the 2-core test machine.
FAST = ("--labels", LABELS, "--top-k", "3", "--dtype", "float32", "--threads", "1")


def noise(size=(64, 48)) -> Image.Image:
    """``noise_image`` at this module's default size."""
    return noise_image(size)


# --- results are never lost: signals ----------------------------------------------------------------


def many_pngs(folder: Path, n: int, avif_every: int = 0) -> list[str]:
    """``n`` small distinct images (every ``avif_every``-th an AVIF: decoded in the worker process)."""
    folder.mkdir(parents=True)
    names = []
    for i in range(n):
        im = Image.new("RGB", (32, 24), (i % 256, (7 * i) % 256, (13 * i) % 256))
        if avif_every and AVIF_SUPPORTED and i % avif_every == 0:  # the first one too: the worker
            # process is running (and past its start-up) by the time the first result is written
            name = f"img_{i:04d}.avif"
            im.save(folder / name, "AVIF")
        else:
            name = f"img_{i:04d}.png"
            im.save(folder / name)
        names.append(name)
    return names


class Wwts:
    """``wwts classify ...`` in its own process group (a terminal's Ctrl-C reaches the whole group).

    stdout/stderr go to files, not pipes: a decode worker that outlives the run would hold a pipe
    open and hang the test. Leaving the ``with`` block kills whatever is left of the group.
    """

    def __init__(self, args: list, cwd: Path) -> None:
        self.cwd = cwd
        self._out, self._err = open(cwd / "wwts.stdout", "w+b"), open(cwd / "wwts.stderr", "w+b")
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(cwd / "hf-home"))
        # float32 pinned: the same work on every CPU, and no bf16 calibration in the child process
        self.proc = subprocess.Popen([str(WWTS), "classify", *map(str, args), "--dtype", "float32"], cwd=cwd, stdout=self._out,
                                     stderr=self._err, start_new_session=True, env=env)
        self.pgid = self.proc.pid

    def __enter__(self) -> "Wwts":
        return self

    def __exit__(self, *exc) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._out.close()
        self._err.close()

    def wait(self, timeout: float = 120) -> tuple[str, str]:
        """Wait for the wwts process itself; its (stdout, stderr)."""
        self.proc.wait(timeout)
        return ((self.cwd / "wwts.stdout").read_bytes().decode("utf-8"),
                (self.cwd / "wwts.stderr").read_bytes().decode("utf-8"))

    def wait_for_lines(self, path: Path, n: int = 1, timeout: float = 120) -> None:
        """Poll ``path`` until it holds ``n`` complete lines (the run is producing results)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_bytes().count(b"\n") >= n:
                return
            if self.proc.poll() is not None:
                out, err = self.wait()
                pytest.fail(f"wwts ended (rc {self.proc.returncode}) before writing results:\n{out}{err}")
            time.sleep(0.005)
        pytest.fail(f"no result line in {path} after {timeout} s")

    def group_is_gone(self, timeout: float = 10) -> bool:
        """True once no process of the group is left (decode workers did not outlive the run)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.pgid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False


def resume_line(stderr: str) -> list[str]:
    """The printed command that finishes the run, with ``wwts`` replaced by this venv's script."""
    lines = [line for line in stderr.splitlines() if "to finish the run:" in line]
    assert len(lines) == 1, stderr
    argv = shlex.split(lines[0].split("to finish the run:", 1)[1])
    assert argv[0] == "wwts" and "--resume" in argv, argv
    return [str(WWTS), *argv[1:]]


def _interrupt_then_resume(tiny_clip, tmp_path, sig: int, out_name: str, expected_rc: int) -> None:
    names = many_pngs(tmp_path / "imgs", 400, avif_every=25)
    out = tmp_path / out_name
    watch = out if out.suffix == ".jsonl" else out.with_name(out.name + ".partial.jsonl")
    with Wwts(["imgs", *FAST, "--model", tiny_clip, "--out", out_name, "--batch-size", "2",
               "--workers", "1"], cwd=tmp_path) as wwts:
        wwts.wait_for_lines(watch)
        if sig == signal.SIGINT:
            os.killpg(wwts.pgid, sig)  # like Ctrl-C in a terminal: the decode worker gets it too
        else:
            wwts.proc.send_signal(sig)  # like `kill PID`
        stdout, stderr = wwts.wait()
        assert wwts.proc.returncode == expected_rc, stderr
        no_traceback(stdout, stderr)
        assert wwts.group_is_gone(), "a decode worker outlived the interrupted run"
    assert "interrupted" in stderr
    if out.suffix == ".json":
        # the records so far are published as one valid JSON document; no partial file is left
        doc = json.loads(out.read_bytes().decode("utf-8"))
        done = doc["results"]
        assert doc["run"]["labels"] == LABELS.split(",") and not watch.exists()
    else:
        done = read_jsonl(out)  # every line parses: whole batches were flushed
    assert 0 < len(done) < len(names)
    assert all(r["label"] for r in done)

    resumed = subprocess.run(resume_line(stderr), cwd=tmp_path, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()
    no_traceback(resumed.stdout.decode(), resumed.stderr.decode())
    if out.suffix == ".json":
        doc = json.loads(out.read_text(encoding="utf-8"))
        records = doc["results"]
        assert not watch.exists()
    else:
        records = read_jsonl(out)
    paths = [r["path"] for r in records]
    assert sorted(paths) == sorted(f"imgs/{n}" for n in names)  # each image exactly once
    assert all(r["label"] for r in records)
    assert [r["path"] for r in records[: len(done)]] == [r["path"] for r in done]  # kept, not redone


@pytest.mark.slow
def test_sigint_stops_flushes_prints_resume_command_and_resume_finishes(tiny_clip, tmp_path):
    _interrupt_then_resume(tiny_clip, tmp_path, signal.SIGINT, "r.jsonl", 130)


@pytest.mark.slow
def test_sigterm_saves_valid_json_and_resume_completes_it(tiny_clip, tmp_path):
    _interrupt_then_resume(tiny_clip, tmp_path, signal.SIGTERM, "r.json", 143)


@pytest.fixture(scope="module")
def second_sigint(tiny_clip, tmp_path_factory):
    """A run stopped by two Ctrl-C 0.2 s apart while its second batch is in flight.

    Yields (the ``Wwts`` process, stdout, stderr, the output file, its bytes at the first signal).
    """
    tmp_path = tmp_path_factory.mktemp("second-sigint")
    folder = tmp_path / "imgs"
    folder.mkdir()
    # 27-megapixel PNGs of under 100 KB: slow to decode (about 0.2 s each here), so a batch of 16
    # on one decode thread takes about 3 s, far longer than the gap between the two signals
    slow = encoded(Image.linear_gradient("L").resize((6000, 4500)).convert("RGB"), "PNG")
    for i in range(80):
        (folder / f"g{i:03d}.png").write_bytes(slow)
    if AVIF_SUPPORTED:  # decoded first, in the worker process
        noise().save(folder / "a.avif", "AVIF")
    out = tmp_path / "r.jsonl"
    # --no-store: the 80 files have the same bytes, and the embedding store would decode only one
    with Wwts(["imgs", *FAST, "--model", tiny_clip, "--out", "r.jsonl", "--batch-size", "16",
               "--workers", "1", "--no-store"], cwd=tmp_path) as wwts:
        wwts.wait_for_lines(out)
        # the first batch is written; let the second one get under way (a signal that lands between
        # two batches stops the run at once, with nothing in flight to wait for)
        time.sleep(0.5)
        at_signal = out.read_bytes()
        os.killpg(wwts.pgid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(wwts.pgid, signal.SIGINT)
        t0 = time.monotonic()
        stdout, stderr = wwts.wait(60)
        print(f"second SIGINT: exited {time.monotonic() - t0:.2f} s after it")
        yield wwts, stdout, stderr, out, at_signal


@pytest.mark.slow
def test_second_sigint_exits_at_once(second_sigint):
    """The first Ctrl-C waits for the batch in flight; a second one does not wait for anything."""
    wwts, stdout, stderr, out, at_signal = second_sigint
    assert wwts.proc.returncode == 130, (wwts.proc.returncode, stderr)
    no_traceback(stdout, stderr)
    assert "done:" not in stderr  # it did not finish the batch and print the summary first
    assert out.read_bytes() == at_signal  # what was flushed stays; nothing half-written after it
    # only the batches finished before the first signal were written (one, or under load two: the
    # decode thread runs ahead while the model works), not the one in flight nor any after it
    written = len(read_jsonl(out))
    assert written % 16 == 0 and 16 <= written < 81, written


def test_after_the_first_signal_the_handler_stays_until_the_process_ends():
    """The run may end on its own between two Ctrl-C (the batch in flight was quick); the second
    one must still exit at once, not raise KeyboardInterrupt into the summary or the shutdown."""
    from wwts.cli.run_loop import Interrupts as _Interrupts

    class FakeRun:
        stopped = False

        def stop(self):
            self.stopped = True

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _Interrupts(FakeRun()) as quiet_run:
            pass
        assert quiet_run.signum is None
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]  # no signal: old handlers back
        run = FakeRun()
        with _Interrupts(run) as interrupts:
            interrupts._handle(signal.SIGINT, None)
        assert run.stopped and interrupts.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) == interrupts._handle
        assert signal.getsignal(signal.SIGTERM) == interrupts._handle
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.slow
@pytest.mark.skipif(not AVIF_SUPPORTED, reason="no AVIF: no decode worker process to outlive the run")
def test_second_sigint_leaves_no_decode_worker_behind(second_sigint):
    wwts = second_sigint[0]
    assert wwts.group_is_gone(5), "the decode worker outlived the run"
