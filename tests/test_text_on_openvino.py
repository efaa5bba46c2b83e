"""``--backend auto`` on a CPU where torch runs the image tower (AMX) puts the label text on a saved
OpenVINO conversion (``backends.auto_text_backend``), so that re-labelling photos the embedding
store holds needs neither torch nor the image tower (issue 13): the first run saves the text
tower and the model's facts in the OpenVINO export; a later run starts without torch, reads every
embedding from the store and encodes only the new labels; a photo the store lacks loads the image tower with torch on first use. Records
equal a ``--no-store`` run's. AMX and a CPU-only machine are simulated; the towers run for real
(tiny models, the real exporter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import assert_same_scores
from wwts.core import engine, hardware
from wwts.core.backends import devices, export_path, is_x86, load_export, plan_backend
from wwts.core.config import RunConfig
from wwts.core.errors import ModelLoadError

pytest.importorskip("openvino")
#: These tests count, corrupt or clear conversions: each starts from an empty conversion cache.
pytestmark = pytest.mark.own_conversions
if not is_x86():
    pytest.skip("the auto rule puts the text tower on OpenVINO on x86 CPUs", allow_module_level=True)

LABELS = ("人", "车", "猫", "花")
NEW = ("鸟", "天空", "山")
#: Same inputs, same towers: scores equal up to float rounding.
SAME = 1e-6
#: Simulates AMX and a CPU-only machine in a fresh interpreter (the auto rule's inputs).
SIMULATE = ("import wwts.core.backends.devices as d, wwts.core.hardware as h\n"
            "d.cpu_has_amx = lambda: True\n"
            "h.accelerator_present = lambda: False\n")


@pytest.fixture
def amx(monkeypatch):
    """``--backend auto`` as on a CPU-only machine with AMX (torch's bf16 rule)."""
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(hardware, "accelerator_present", lambda: False)


def _run(model, images, **kw):
    config = RunConfig(task="classify", inputs=(images,), labels=kw.pop("labels", LABELS), model=str(model),
                       backend="auto", batch_size=4, **kw)
    run = engine.start(config)
    return run, list(run)


def _assert_same(a, b, tol=SAME):
    assert_same_scores(a, b, tol)


def test_auto_on_amx_puts_the_text_tower_on_openvino(amx):
    choice = plan_backend("auto", "auto", task="classify", threads=2)
    assert (choice.name, choice.text_backend) == ("torch", "openvino")
    assert "label text on OpenVINO" in choice.reason
    # int8 runs both towers on OpenVINO; caption never splits its towers over two backends (its auto
    # pick, OpenVINO or torch by the size rule, runs both); an explicit --backend torch keeps the text on torch
    int8 = plan_backend("auto", "auto", task="classify", int8=True, threads=2)
    assert (int8.name, int8.text) == ("openvino", "")
    assert plan_backend("auto", "auto", task="caption", threads=2).text == ""
    assert plan_backend("torch", "auto", task="classify", threads=2).text_backend == "torch"


def test_relabel_is_served_without_the_image_tower_and_equals_a_fresh_run(amx, tiny_clip, sample_images, tmp_path):
    store = dict(store=True, store_dir=str(tmp_path / "store"))
    first, _ = _run(tiny_clip, sample_images, **store)
    assert first.task.encoder.model is not None  # the model loaded; the text tower converted
    assert first.task.text_encoder.backend == "openvino"
    assert (first.task.image_encoder.backend, first.task.image_encoder.tower) == ("torch", "image")
    assert load_export(tiny_clip, "torch", False) is not None
    assert first.task.model.text_model is None  # torch's copy of the text tower is freed
    assert not first.task.text_encoder.ready  # and OpenVINO's, once the labels are encoded
    relabel, records = _run(tiny_clip, sample_images, labels=NEW, **store)
    assert relabel.task.encoder.export is not None
    assert relabel.stats.cached == len(records)  # the torch run's embeddings, found by the same store key
    assert not relabel.task.image_encoder.ready  # the model was never loaded
    assert relabel.info()["backend"] == "torch" and relabel.info()["dtype"] == first.info()["dtype"]
    _, fresh = _run(tiny_clip, sample_images, labels=NEW, store=False)
    _assert_same(fresh, records)


def _photos(sample_images, folder: Path, count: int = 40) -> tuple[Path, Path]:
    """``count`` distinct photos (sample images with a byte appended): more than the 32 a torch
    export's run checks in the store before it starts without torch. Returns the folder and one
    photo that check skips (``exports.sample_indices``, in the run's order)."""
    from wwts.core.tasks.exports import sample_indices

    folder.mkdir()
    sources = sorted(p for p in sample_images.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    for i in range(count):
        src = sources[i % len(sources)]
        (folder / f"p{i:03d}{src.suffix}").write_bytes(src.read_bytes() + bytes([i]))
    order = engine.find_images(RunConfig(task="classify", inputs=(folder,), labels=LABELS))
    skipped = sorted(set(range(count)) - set(sample_indices(count)))
    assert skipped and sample_indices(count)[-1] == count - 1  # the last photo is always checked
    return folder, order[skipped[len(skipped) // 2]]


def _change(photo: Path) -> None:
    photo.write_bytes(photo.read_bytes() + b"changed")  # other bytes: not in the store


def test_a_photo_missing_from_the_store_loads_the_image_tower(amx, sample_images, tiny_clip, tmp_path):
    photos, unchecked = _photos(sample_images, tmp_path / "photos")
    store = dict(store=True, store_dir=str(tmp_path / "store"))
    _run(tiny_clip, photos, **store)
    _change(unchecked)
    run, records = _run(tiny_clip, photos, labels=NEW, **store)
    assert run.task.encoder.export is not None and run.task.image_encoder.ready
    assert run.stats.cached == len(records) - 1
    assert run.stats.load_s >= run.task.image_encoder.load_s > 0  # reported as model load, not iteration
    _, fresh = _run(tiny_clip, photos, labels=NEW, store=False)
    _assert_same(fresh, records, tol=1e-5)  # the changed photo went through the tower in a batch of its own


def test_photos_the_store_lacks_or_no_store_load_the_model_first(amx, sample_images, tiny_clip, tmp_path):
    """Where the image tower will be needed anyway, the run loads the model up front instead of
    starting without torch and loading it in the first batch."""
    photos, _ = _photos(sample_images, tmp_path / "photos")
    store = dict(store=True, store_dir=str(tmp_path / "store"))
    _run(tiny_clip, photos, **store)
    assert load_export(tiny_clip, "torch", False) is not None
    no_store, _ = _run(tiny_clip, photos, labels=NEW, store=False)
    assert no_store.task.encoder.model is not None
    (photos / "z new.jpg").write_bytes((photos / "p000.jpg").read_bytes() + b"new")  # sorts last: checked
    added, records = _run(tiny_clip, photos, labels=NEW, **store)
    assert added.task.encoder.model is not None and added.stats.cached == len(records) - 1


def test_an_image_tower_that_cannot_load_ends_the_run(amx, sample_images, tiny_clip, tmp_path, monkeypatch):
    from wwts.core.tasks import load

    photos, unchecked = _photos(sample_images, tmp_path / "photos")
    store = dict(store=True, store_dir=str(tmp_path / "store"))
    _run(tiny_clip, photos, **store)  # saves the export and the embeddings
    _change(unchecked)

    def broken(*args, **kwargs):
        raise ModelLoadError("cannot load the weights")

    monkeypatch.setattr(load, "load_dual_encoder", broken)
    run = engine.start(RunConfig(task="classify", inputs=(photos,), labels=NEW, model=str(tiny_clip),
                                 backend="auto", batch_size=4, **store))
    assert run.task.encoder.export is not None
    with pytest.raises(ModelLoadError, match="cannot load the weights"):
        list(run)  # not one "inference:" error per image, each retrying the load


def test_the_torch_free_dtype_is_the_one_torch_chooses(monkeypatch):
    from wwts.core.hardware import calibration, cpu, select_dtype

    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda: True)
    import torch

    threads = torch.get_num_threads()
    assert hardware.cpu_dtype_without_torch("auto", 8, threads) is None  # never calibrated: torch measures
    for times, want in (({"float32": 0.10, "bfloat16": 0.05}, "bfloat16"), ({"float32": 0.10, "bfloat16": 0.14},
                                                                            "float32")):
        monkeypatch.setattr(calibration, "time_block", lambda batch_size, rounds=3, t=times: dict(t))
        calibration.cache_file().unlink(missing_ok=True)
        assert str(select_dtype(torch.device("cpu"), "auto", 8)) == f"torch.{want}"  # measures, caches
        assert hardware.cpu_dtype_without_torch("auto", 8, threads) == want
    assert hardware.cpu_dtype_without_torch("float32", 8, threads) == "float32"
    assert hardware.cpu_dtype_without_torch("bfloat16", 8, threads) == "bfloat16"
    monkeypatch.setattr(cpu, "cpu_has_native_fp16", lambda: False)
    assert hardware.cpu_dtype_without_torch("float16", 8, threads) is None  # torch's path says why


def _cli(args: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``wwts ARGS`` in a new interpreter on a simulated AMX CPU; the heavy modules it imported."""
    code = (SIMULATE + "import sys\nfrom wwts.cli.app import main\n"
            f"sys.argv = ['wwts'] + {args!r}\n"
            "try:\n    main()\n"
            "finally:\n"
            "    print('MODULES', [m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items() if k != "WWTS_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    line = [x for x in proc.stderr.splitlines() if x.startswith("MODULES")][-1]
    return proc, eval(line.split(" ", 1)[1])  # a list literal printed by the child


def test_relabelling_stored_photos_imports_neither_torch_nor_transformers(tiny_clip, sample_images, tmp_path):
    base = ["classify", str(sample_images), "--model", str(tiny_clip), "--quiet", "--overwrite",
            "--store", str(tmp_path / "store")]
    first, modules = _cli([*base, "--labels", ",".join(LABELS), "--out", str(tmp_path / "a.json")])
    assert first.returncode == 0, first.stderr
    assert "torch" in modules
    second, modules = _cli([*base, "--labels", ",".join(NEW), "--out", str(tmp_path / "b.json")])
    assert second.returncode == 0, second.stderr
    assert modules == []
    b = json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))
    assert all(r["cached"] for r in b["results"]) and b["run"]["backend"] == "torch"
    ref, _ = _cli(["classify", str(sample_images), "--model", str(tiny_clip), "--quiet", "--no-store",
                   "--labels", ",".join(NEW), "--out", str(tmp_path / "c.json")])
    assert ref.returncode == 0, ref.stderr
    c = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
    assert [r["label"] for r in b["results"]] == [r["label"] for r in c["results"]]
    assert max(abs(x["score"] - y["score"]) for x, y in zip(b["results"], c["results"])) <= SAME


def test_the_text_stays_on_torch_where_no_later_run_could_start_without_torch(amx, sample_images, tmp_path):
    """SigLIP's SentencePiece tokenizer is not one ``TextTokenizer`` reproduces: converting its text
    tower would buy nothing, so it stays on torch and nothing is converted."""
    from tests.tiny_models import build_tiny_siglip

    folder = build_tiny_siglip(tmp_path / "siglip")
    run, records = _run(folder, sample_images, store=False)
    assert run.task.encoder.model is not None and all(r.error is None for r in records)
    assert (run.task.text_encoder.backend, run.task.text_encoder.tower) == ("torch", "text")
    assert not export_path(folder, "torch").exists()
