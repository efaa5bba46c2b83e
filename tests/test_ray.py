"""``--ray``: classify and caption on a real local Ray cluster give the local engine's records.

A one-node cluster (2 CPUs, no dashboard, 200 MB object store) is started once for the module by
``ray.init`` in this process and stopped at the end. Runs of the CLI in this process reuse that
connection (``connect`` sees it); the Ctrl-C test runs ``wwts`` as a child process that connects
to the cluster by its address, as a user's driver does. Workers get this process's environment
as it is when the cluster starts: offline hub, caches in a temporary folder, the fault drill file.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import encoded, noise_image

WWTS = Path(sys.executable).with_name("wwts")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, on its DataContext
FAST = ["--dtype", "float32", "--quiet"]
LABELS = "猫,狗,车"


def cli(*args):
    """``wwts ARGS...`` in this process; the ``Result``."""
    from wwts.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ray_cluster():
    """``(gcs address, fault drill file)`` of a local Ray cluster started for this module."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from wwts.core.cluster import FAULT_FILE_ENV

    home = Path(tempfile.mkdtemp(prefix="wwts-ray-"))  # short: Ray's socket paths must fit 107 bytes
    env = {"HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(home / "cache"), "HF_HOME": str(home / "hf"),
           FAULT_FILE_ENV: str(home / "kill-one-actor"), "RAY_BACKEND_LOG_LEVEL": "fatal"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the workers inherit it
    try:
        ctx = ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=200 * 2**20,
                       _temp_dir=str(home / "r"), log_to_driver=False)
    finally:
        for k, v in saved.items():
            if k != "RAY_BACKEND_LOG_LEVEL":
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    yield ctx.address_info["gcs_address"], Path(env[FAULT_FILE_ENV])
    ray.shutdown()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory, sample_images) -> Path:
    """The sample photos plus a broken JPEG, a truncated PNG, an empty file and text named .jpg."""
    folder = tmp_path_factory.mktemp("hostile") / "imgs"
    shutil.copytree(sample_images, folder, ignore=shutil.ignore_patterns("*.md"))
    png = encoded(noise_image(), "PNG")
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image", encoding="utf-8")
    return folder


def read_records(out: Path) -> dict[str, dict]:
    """``path`` → record of a .jsonl output; fails on a repeated path."""
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    by_path = {r["path"]: r for r in records}
    assert len(by_path) == len(records), "a path appears twice"
    return by_path


def assert_same_records(ray_out: Path, local_out: Path) -> dict[str, dict]:
    """Same paths, and field by field the same records (scores to 1e-5, order free)."""
    got, want = read_records(ray_out), read_records(local_out)
    assert sorted(got) == sorted(want)
    for path, record in want.items():
        other = got[path]
        assert set(other) == set(record), path
        for key, value in record.items():
            if key == "cached":  # the embedding store is per node; not a property of the image
                continue
            if isinstance(value, float):
                assert math.isclose(other[key], value, abs_tol=1e-5), (path, key)
            elif key == "top_k" and value:
                assert [t["label"] for t in other[key]] == [t["label"] for t in value], path
                assert all(math.isclose(a["score"], b["score"], abs_tol=1e-5) for a, b in zip(other[key], value))
            else:
                assert other[key] == value, (path, key)
    return got


def run_section(out: Path) -> dict:
    return json.loads(out.with_name(out.name + ".run.json").read_text(encoding="utf-8"))


# -- the same records as the local engine --------------------------------------------------------


def test_classify_on_ray_gives_the_local_records_errors_included(ray_cluster, tiny_clip, hostile_folder, tmp_path):
    address, _ = ray_cluster
    common = ["classify", hostile_folder, "--labels", LABELS, "--model", tiny_clip, "--batch-size", "4", *FAST]
    local = cli(*common, "--out", tmp_path / "local.jsonl")
    assert local.exit_code == 3, local.output  # 3: some images failed (the hostile ones)
    result = cli(*common, "--ray", address, "--out", tmp_path / "ray.jsonl")
    assert result.exit_code == 3, result.output
    records = assert_same_records(tmp_path / "ray.jsonl", tmp_path / "local.jsonl")
    assert sorted(Path(p).name for p, r in records.items() if r["error"]) == [
        "broken.jpg", "empty.jpg", "text.jpg", "truncated.png"]
    run = run_section(tmp_path / "ray.jsonl")
    assert run["cluster"]["nodes"] == 1 and run["cluster"]["actors"] == 1 and run["cluster"]["cpus"] == 2
    assert run["cluster"]["actor_devices"] and run["images"] == len(records) and run["images_per_s"] > 0
    assert run["dtype"] == "float32" and run["labels"] == LABELS.split(",") and run["complete"] is True


def test_caption_on_ray_gives_the_local_records(ray_cluster, tmp_path_factory, sample_images, tmp_path):
    from tests.tiny_caption_models import build_tiny_blip

    address, _ = ray_cluster
    blip = build_tiny_blip(tmp_path_factory.mktemp("models") / "tiny-blip")
    common = ["caption", sample_images, "--model", blip, "--max-new-tokens", "5", *FAST]
    local = cli(*common, "--out", tmp_path / "local.jsonl")
    assert local.exit_code == 0, local.output
    result = cli(*common, "--ray", address, "--out", tmp_path / "ray.jsonl")
    assert result.exit_code == 0, result.output
    records = assert_same_records(tmp_path / "ray.jsonl", tmp_path / "local.jsonl")
    assert all(r["caption"] is not None and not r["error"] for r in records.values())
    assert run_section(tmp_path / "ray.jsonl")["family"] == "blip"


# -- interruptions and failures -------------------------------------------------------------------


def many_pngs(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True)
    names = [f"{i:03d}.png" for i in range(n)]
    for i, name in enumerate(names):
        Image.new("RGB", (48, 32), (i % 256, 40, 90)).save(folder / name)
    return names


@pytest.mark.slow
def test_ctrl_c_then_resume_completes_with_no_duplicates(ray_cluster, tiny_clip, tmp_path):
    address, _ = ray_cluster
    names = many_pngs(tmp_path / "imgs", 400)  # 200 batches: the run is far from done at its first record
    out = tmp_path / "r.jsonl"
    args = ["classify", "imgs", "--labels", LABELS, "--model", tiny_clip, "--batch-size", "2", *FAST,
            "--out", out.name]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with open(tmp_path / "stderr", "w+b") as err:
        proc = subprocess.Popen([str(WWTS), *args, "--ray", address], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=err, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not (out.exists() and out.read_bytes().count(b"\n") >= 1):
                assert proc.poll() is None, (tmp_path / "stderr").read_text()
                assert time.monotonic() < deadline, "no record after 120 s"
                time.sleep(0.005)
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert proc.wait(60) == 130, (tmp_path / "stderr").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = (tmp_path / "stderr").read_text(encoding="utf-8")
    assert "interrupted" in stderr and "--resume" in stderr and "Traceback" not in stderr
    done = read_records(out)
    assert 0 < len(done) < len(names), len(done)

    cwd = os.getcwd()
    os.chdir(tmp_path)  # the same relative paths as the interrupted run
    try:
        resumed = cli(*args, "--ray", address, "--resume")
    finally:
        os.chdir(cwd)
    assert resumed.exit_code == 0, resumed.output
    records = read_records(out)  # fails on a duplicate
    assert sorted(records) == sorted(f"imgs/{n}" for n in names)
    assert all(records[p] == r for p, r in done.items())  # kept, not redone
    assert all(r["label"] for r in records.values())


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(ray_cluster, tiny_clip, tmp_path):
    address, fault_file = ray_cluster
    names = many_pngs(tmp_path / "imgs", 24)
    fault_file.write_bytes(b"")  # armed: the first actor to see it dies in the middle of a batch
    out = tmp_path / "r.jsonl"
    result = cli("classify", tmp_path / "imgs", "--labels", LABELS, "--model", tiny_clip, "--batch-size", "4",
                 *FAST, "--ray", address, "--out", out)
    assert not fault_file.exists(), "no actor ran the drill"
    assert result.exit_code == 0, result.output
    records = read_records(out)  # fails on a duplicate
    assert sorted(records) == sorted(str(tmp_path / "imgs" / n) for n in names)
    assert all(r["label"] and not r["error"] for r in records.values())
    assert run_section(out)["complete"] is True


# -- without Ray ----------------------------------------------------------------------------------


def test_ray_missing_says_what_to_install_and_exits_2(tiny_clip, sample_images, monkeypatch):
    for name in ("ray", "ray.data"):
        monkeypatch.setitem(sys.modules, name, None)  # `import ray` raises ImportError
    result = cli("classify", sample_images, "--labels", LABELS, "--model", tiny_clip, *FAST, "--ray", "auto")
    assert result.exit_code == 2, result.output
    assert 'pip install "wwts[ray]"' in result.output
    assert "Traceback" not in result.output


def test_a_local_run_never_imports_ray(tiny_clip, sample_images, tmp_path, monkeypatch):
    import builtins

    real_import, asked = builtins.__import__, []

    def watching(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            asked.append(name)
        return real_import(name, *args, **kwargs)

    loaded_before = "ray" in sys.modules
    monkeypatch.setattr(builtins, "__import__", watching)  # sees `import ray` even if loaded already
    result = cli("classify", sample_images, "--labels", LABELS, "--model", tiny_clip, *FAST,
                 "--out", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    assert asked == []
    assert loaded_before or "ray" not in sys.modules


# -- the steps the nodes run, called directly ----------------------------------------------------


def test_decode_step_and_model_actor_make_the_engines_records_with_or_without_the_preparer(
        tiny_clip, hostile_folder):
    """The decode step prepares with the task's own ``prepare`` when its weight-free copy pickles;
    else the actor prepares: both give the local engine's records, errors included."""
    import numpy as np

    from wwts.core import RunConfig, engine
    from wwts.core.cluster import workers

    config = RunConfig(task="classify", inputs=(hostile_folder,), labels=tuple(LABELS.split(",")),
                       model=str(tiny_clip), dtype="float32", batch_size=4)
    probed = workers.probe(config)
    assert "error" not in probed and probed["preparer"] is not None  # the task's prepare runs in the decode step
    paths = engine.find_images(config)
    batch = {"path": np.array([str(p) for p in paths]), "file": np.array([str(p.absolute()) for p in paths])}
    local = list(engine.start(config))
    for preparer in (probed["preparer"], None):
        decoded = workers.decode_batch(batch, config=config, run_id=str(preparer is None),
                                       input_size=probed["input_size"], preparer=preparer,
                                       draft_keep=probed["draft_keep"])
        actor = workers.ModelActor(config, prepared=preparer is not None)
        out = actor({"path": np.array(decoded["path"]), "sample": np.array(decoded["sample"], dtype=object)})
        records = [pickle.loads(blob) for blob in out["record"]]
        assert [r.path for r in records] == [r.path for r in local]
        for got, want in zip(records, local):
            assert (got.error, got.label, got.width, got.height) == (want.error, want.label, want.width, want.height)
            assert got.error or math.isclose(got.score, want.score, abs_tol=1e-6)


class _Holder:
    def __init__(self):
        import torch

        self.model = torch.nn.Linear(2, 2)


class _FakeTask:
    """A task's kinds of attributes: processor settings, a model, a tensor, an encoder holding
    the model, an open database."""

    def __init__(self):
        import sqlite3

        import torch

        self.processor = {"size": 224}
        self.model = torch.nn.Linear(2, 2)
        self.features = torch.zeros(3)
        self.encoder = _Holder()
        self.db = sqlite3.connect(":memory:")


def test_a_model_free_task_copy_keeps_what_prepare_needs_and_drops_the_rest():
    from wwts.core.cluster import workers

    task = _FakeTask()
    light = workers.model_free(task)
    assert light.processor == {"size": 224}
    assert light.model is None and light.features is None and light.encoder is None and light.db is None
    assert task.model is not None and task.db is not None  # the task itself is untouched
    pickle.loads(pickle.dumps(light))


# -- the actor pool's size ------------------------------------------------------------------------


def test_actor_pool_one_actor_per_gpu_else_one_per_cpu_node():
    from wwts.core import DeviceError, UsageError
    from wwts.core.cluster import plan_layout

    gpu = plan_layout("auto", [(16, 2), (16, 1), (8, 0)], "auto", None)
    assert (gpu.actors, gpu.actor_gpus, gpu.actor_cpus, gpu.gpus, gpu.cpus) == (3, 1, 1, 3, 40)
    assert plan_layout("auto", [(16, 2)], "cpu", None).actor_gpus == 0  # --device cpu: CPU actors
    cpu = plan_layout("auto", [(16, 0), (16, 0), (2, 0)], "auto", None)
    # the smallest node sets the actor's share: 2 CPUs → 1 for the model, 1 for decoding
    assert (cpu.actors, cpu.actor_cpus, cpu.threads, cpu.actor_gpus) == (3, 1, 1, 0)
    big = plan_layout("auto", [(16, 0), (16, 0)], "auto", None)
    assert (big.actors, big.actor_cpus, big.threads) == (2, 12, 12)  # a quarter left to decoding
    # --threads sets the torch threads; the actor never holds its node's last CPU
    assert (lambda lay: (lay.actor_cpus, lay.threads))(plan_layout("auto", [(2, 0)], "auto", 2)) == (1, 2)
    assert plan_layout("auto", [(1, 0), (4, 0)], "auto", None).actors == 1  # a 1-CPU node gets none
    with pytest.raises(DeviceError, match="no GPU"):
        plan_layout("auto", [(8, 0)], "cuda", None)
    with pytest.raises(UsageError, match="2 CPUs"):
        plan_layout("auto", [(1, 0)], "auto", None)
