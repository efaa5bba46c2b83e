"""A classify run on a saved OpenVINO / ONNX Runtime conversion starts without torch or transformers
(``core.tasks.exports``, issue 12): the first run on a backend saves an export, later
runs are served from it with the same records, store keys and text features; a changed model, an
export of another format, or a processor the NumPy preprocessing does not reproduce falls back
to loading the model with transformers. Tiny models, converted through the real exporters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import assert_same_scores
from wwts.core import engine
from wwts.core.backends import export_path, load_export
from wwts.core.config import RunConfig

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")
#: These tests count, corrupt or clear conversions: each starts from an empty conversion cache.
pytestmark = pytest.mark.own_conversions

LABELS = ("人", "车", "猫", "花")
#: The compiled task gets bit-identical inputs (tests/test_preprocess.py, tests/test_tokenizer.py)
#: and runs the same saved graph: its scores equal the torch-loaded run's up to float rounding.
SAME = 1e-6
BACKENDS = ["openvino", "onnxruntime"]


def _run(model, images, backend, **kw):
    config = RunConfig(task="classify", inputs=(images,), labels=kw.pop("labels", LABELS), model=str(model),
                       backend=backend, dtype=kw.pop("dtype", "float32"), batch_size=4, **kw)
    run = engine.start(config)
    return run, list(run)


def _assert_same(a, b, tol=SAME):
    assert_same_scores(a, b, tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_run_is_served_from_the_export_with_the_same_records(backend, tiny_clip, sample_images):
    first, ref = _run(tiny_clip, sample_images, backend)
    assert first.task.encoder.model is not None  # loaded with transformers, converted, export saved
    assert load_export(tiny_clip, backend, False) is not None
    second, got = _run(tiny_clip, sample_images, backend)
    assert second.task.encoder.export is not None and second.task.uses_torch is False
    _assert_same(ref, got)
    info = second.info()
    assert info["backend"] == backend and info["labels"] == list(LABELS)
    assert json.dumps(info)  # the run section stays JSON (no torch dtype in it)


def _cli_in_fresh_process(args: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``wwts ARGS`` in a new interpreter; returns the process and the heavy modules it imported."""
    code = ("import sys\n"
            "from wwts.cli.app import main\n"
            f"sys.argv = ['wwts'] + {args!r}\n"
            "try:\n    main()\n"
            "finally:\n"
            "    print('MODULES', [m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                          timeout=600)
    line = [x for x in proc.stderr.splitlines() if x.startswith("MODULES")][-1]
    return proc, eval(line.split(" ", 1)[1])  # a list literal printed by the child


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_on_a_saved_conversion_imports_neither_torch_nor_transformers(backend, tiny_clip, sample_images,
                                                                             tmp_path):
    args = ["classify", str(sample_images), "--labels", ",".join(LABELS), "--model", str(tiny_clip),
            "--backend", backend, "--dtype", "float32", "--quiet", "--overwrite"]
    first, first_modules = _cli_in_fresh_process([*args, "--out", str(tmp_path / "a.json")])
    assert first.returncode == 0, first.stderr
    assert "torch" in first_modules  # the first run loads the model and converts it
    second, second_modules = _cli_in_fresh_process([*args, "--out", str(tmp_path / "b.json")])
    assert second.returncode == 0, second.stderr
    assert second_modules == []
    a, b = (json.loads((tmp_path / f"{n}.json").read_text(encoding="utf-8")) for n in "ab")
    assert [r["label"] for r in a["results"]] == [r["label"] for r in b["results"]]
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a["results"], b["results"])) <= SAME


def test_store_run_on_the_export_reads_every_embedding_and_never_compiles_the_image_tower(
        tiny_clip, sample_images, tmp_path):
    store = tmp_path / "store"
    _run(tiny_clip, sample_images, "openvino", store=True, store_dir=str(store))  # converts, stores
    first, stored = _run(tiny_clip, sample_images, "openvino", store=True, store_dir=str(store))
    assert first.task.encoder.export is not None
    assert first.stats.cached == len(stored)  # the torch-loaded run's embeddings, found by the same key
    new = ("鸟", "天空", "山")
    relabel, records = _run(tiny_clip, sample_images, "openvino", labels=new, store=True, store_dir=str(store))
    assert relabel.stats.cached == len(records)
    assert not relabel.task.image_encoder.ready  # no image went through the tower: never compiled
    _, fresh = _run(tiny_clip, sample_images, "openvino", labels=new, store=False)
    _assert_same(fresh, records)


def test_multi_label_scores_match_the_torch_loaded_task(tiny_clip, sample_images):
    kw = dict(multi_label=True, threshold=0.4)
    _, ref = _run(tiny_clip, sample_images, "openvino", **kw)
    second, got = _run(tiny_clip, sample_images, "openvino", **kw)
    assert second.task.encoder.export is not None and second.task.label_set.neutral
    _assert_same(ref, got)
    assert [r.labels for r in ref] == [r.labels for r in got]


def test_a_changed_model_is_not_served_its_old_export(tmp_path, sample_images):
    import shutil

    from tests.tiny_models import build_tiny_chinese_clip

    folder = build_tiny_chinese_clip(tmp_path / "m", seed=0)
    _run(folder, sample_images, "openvino")
    assert load_export(folder, "openvino", False) is not None
    shutil.rmtree(folder)
    build_tiny_chinese_clip(folder, seed=1)  # re-saved: same folder, other weights
    assert load_export(folder, "openvino", False) is None
    run, _ = _run(folder, sample_images, "openvino")
    assert run.task.encoder.model is not None  # loaded with transformers, and a new export saved
    assert load_export(folder, "openvino", False) is not None


def test_a_processor_the_numpy_path_cannot_reproduce_loads_the_model(tiny_clip, sample_images):
    _run(tiny_clip, sample_images, "openvino")
    path = export_path(tiny_clip, "openvino")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["facts"]["image_recipe"]["do_pad"] = True  # a setting ImagePreprocessor does not do
    path.write_text(json.dumps(data), encoding="utf-8")
    run, records = _run(tiny_clip, sample_images, "openvino")
    assert run.task.encoder.model is not None and all(r.error is None for r in records)


def test_an_export_of_another_format_is_ignored(tiny_clip, sample_images):
    _run(tiny_clip, sample_images, "onnxruntime")
    path = export_path(tiny_clip, "onnxruntime")
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**data, "format": 999}), encoding="utf-8")
    assert load_export(tiny_clip, "onnxruntime", False) is None
    path.write_text("{not json", encoding="utf-8")
    assert load_export(tiny_clip, "onnxruntime", False) is None


def test_auto_on_a_cpu_only_machine_proves_no_torch_device(monkeypatch):
    """``--backend auto`` on an x86 CPU without AMX and without any accelerator picks OpenVINO without
    importing torch to prove that the device is the CPU."""
    from wwts.core import hardware
    from wwts.core.backends import devices, is_x86
    from wwts.core.engine import plan

    if not is_x86():
        pytest.skip("the auto rule picks OpenVINO on x86 CPUs")
    monkeypatch.setattr(hardware, "accelerator_present", lambda: False)
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(hardware, "select_device", lambda *a, **k: pytest.fail("proved a torch device"))
    config = RunConfig(task="classify", inputs=(Path("."),), labels=LABELS, backend="auto")
    backend, choice = plan._choose_backend(config, [], 2)
    assert backend.name == "openvino" and choice is None


def test_clearing_conversions_removes_their_exports(tiny_clip, sample_images):
    from wwts.core.backends import clear_conversions

    _run(tiny_clip, sample_images, "openvino")
    assert load_export(tiny_clip, "openvino", False) is not None
    clear_conversions("onnxruntime")  # another backend's: this export stays
    assert load_export(tiny_clip, "openvino", False) is not None
    clear_conversions("openvino")
    assert not export_path(tiny_clip, "openvino").exists()
    run, _ = _run(tiny_clip, sample_images, "openvino")
    assert run.task.encoder.model is not None  # converted again, with transformers
