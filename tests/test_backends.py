"""Backends (issue 12): OpenVINO and ONNX Runtime run the classify towers of a tiny Chinese-CLIP
converted through the real exporters, agree with torch float32, cache their conversions (and
rebuild corrupt or stale ones), and take device names of their own.

Tolerance: probabilities within ``PROB_TOL`` of torch float32 and image embeddings at cosine
``>= 0.9999`` (float32 on all three; measured differences are ~1e-6, the margin covers other
CPUs' kernels).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

import pytest
import torch

from tests.helpers import classify as run_cli
from wwts.core import DeviceError, UsageError, engine
from wwts.core.backends import TorchTower, auto_backend, is_x86, resolve_openvino_device
from wwts.core.backends import export, onnxruntime as ort_backend, openvino as ov_backend  # conversion counters
from wwts.core.config import RunConfig

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")
#: These tests count, corrupt or clear conversions: each starts from an empty conversion cache.
pytestmark = pytest.mark.own_conversions

PROB_TOL = 1e-4
LABELS = ("人", "车", "猫", "花")


def _records(model, images, backend, **kw):
    config = RunConfig(task="classify", inputs=(images,), labels=LABELS, model=str(model), backend=backend,
                       dtype=kw.pop("dtype", "float32"), batch_size=4, **kw)
    run = engine.start(config)
    return run, list(run)


def _conversions() -> int:
    return sum(ov_backend.CONVERSIONS.values()) + sum(ort_backend.CONVERSIONS.values())


def _assert_close(ref, got):
    assert [r.path for r in ref] == [r.path for r in got]
    for a, b in zip(ref, got):
        assert a.error is None and b.error is None
        assert [t.label for t in a.top_k] == [t.label for t in b.top_k] or \
            max(abs(x.score - y.score) for x, y in zip(a.top_k, b.top_k)) < PROB_TOL
        for x, y in zip(sorted(a.top_k, key=lambda t: t.label), sorted(b.top_k, key=lambda t: t.label)):
            assert x.score == pytest.approx(y.score, abs=PROB_TOL)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_backend_scores_equal_torch_float32_and_second_run_converts_nothing(backend, tiny_clip, sample_images):
    _, ref = _records(tiny_clip, sample_images, "torch")
    before = _conversions()
    run, got = _records(tiny_clip, sample_images, backend)
    assert _conversions() - before == 2  # image and text tower, through the real exporter
    _assert_close(ref, got)
    info = run.info()
    assert info["backend"] == backend and info["dtype"] == "float32" and "first_batch_s" in info
    pixels = torch.rand(3, 3, 30, 30)
    task = run.task
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(task.image_encoder.encode(pixels)),
                                                TorchTower(task.model, torch.device("cpu"), torch.float32,
                                                                           "image").encode(pixels))
    assert cos.min().item() >= 0.9999
    second, again = _records(tiny_clip, sample_images, backend)
    assert _conversions() - before == 2  # the second run loads the saved conversion
    assert second.task.encoder.export is not None  # ... from its export, without the torch model
    _assert_close(ref, again)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_corrupt_conversion_is_rebuilt_not_served(backend, tiny_clip, sample_images, caplog):
    _, ref = _records(tiny_clip, sample_images, "torch")
    _records(tiny_clip, sample_images, backend)
    weights = [p for p in (export.cache_root() / backend).rglob("*") if p.suffix in (".bin", ".onnx")
               and p.parent.name.startswith("image-")]
    assert weights
    data = bytearray(weights[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    weights[0].write_bytes(bytes(data))
    before = _conversions()
    _, got = _records(tiny_clip, sample_images, backend)
    assert _conversions() - before == 1
    assert "does not match its checksum" in caplog.text
    _assert_close(ref, got)


def test_changed_model_is_not_served_the_old_conversion(tmp_path, sample_images):
    from tests.tiny_models import build_tiny_chinese_clip

    folder = build_tiny_chinese_clip(tmp_path / "m", seed=0)
    _records(folder, sample_images, "openvino")
    shutil.rmtree(folder)
    build_tiny_chinese_clip(folder, seed=1)  # same folder, other weights
    before = _conversions()
    _, ref = _records(folder, sample_images, "torch")
    _, got = _records(folder, sample_images, "openvino")
    assert _conversions() - before == 2
    _assert_close(ref, got)


def test_openvino_never_touches_cuda(tiny_clip, sample_images, monkeypatch):
    """A simulated CUDA machine: every CUDA query is recorded; OpenVINO must ask none."""
    calls = []
    for name in ("is_available", "device_count", "get_device_properties", "mem_get_info", "set_device",
                 "synchronize", "current_device"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _n=name, **k: calls.append(_n) or True)
    run, records = _records(tiny_clip, sample_images, "openvino", device="auto")
    assert records and all(r.error is None for r in records)
    assert run.info()["device"] == "CPU"
    assert calls == []


def test_auto_rule():
    cpu = dict(torch_device=lambda: "cpu", openvino_devices=lambda: ["CPU"])
    assert auto_backend("auto", "caption", True, **cpu)[0] == "torch"  # float caption: test_caption_openvino.py
    assert auto_backend("GPU.1", "classify", False, torch_device=lambda: pytest.fail("probed torch"),
                        openvino_devices=lambda: ["CPU"])[0] == "openvino"
    name, reason = auto_backend("auto", "classify", False, torch_device=lambda: "cuda",
                                openvino_devices=lambda: ["CPU"])
    assert name == "torch" and "CUDA" in reason
    assert auto_backend("auto", "classify", False, torch_device=lambda: "mps", openvino_devices=lambda: [])[0] == "torch"
    if is_x86():
        assert auto_backend("auto", "classify", False, **cpu)[0] == "openvino"
    # a CPU with AMX-BF16: torch's bf16 autocast for a float run (simulated either way)
    name, reason = auto_backend("auto", "classify", False, **cpu, cpu_has_amx=lambda: True)
    assert name == "torch" and "AMX" in reason
    if is_x86():
        assert auto_backend("auto", "classify", False, **cpu, cpu_has_amx=lambda: False)[0] == "openvino"
        assert auto_backend("auto", "classify", True, **cpu, cpu_has_amx=lambda: True)[0] == "openvino"  # int8


def test_openvino_precision_on_amx_and_the_non_finite_guard(monkeypatch):
    from wwts.core.backends import devices, openvino

    monkeypatch.setattr(devices, "cpu_has_amx", lambda: True)
    assert openvino._image_hint("auto", "CPU") == "f32"  # OpenVINO's bf16 default gave NaN with AMX here
    assert openvino._image_hint("bfloat16", "CPU") == "bf16"  # asked for: honoured (and checked)
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: False)
    assert openvino._image_hint("auto", "CPU") is None

    compiled_with = []

    class Compiled:
        def __init__(self, hint):
            self.hint = hint

        def output(self, i):
            return 0

        def __call__(self, inputs):
            value = np.nan if self.hint == "bf16" else 1.0
            return {0: np.full((inputs[0].shape[0], 4), value, dtype=np.float32)}

        def get_property(self, name):
            raise RuntimeError("not reported")

    monkeypatch.setattr(openvino, "compile_model", lambda path, device, hint, threads: compiled_with.append(hint)
                        or Compiled(hint))
    assert openvino._checked_compile(Path("m.xml"), "CPU", "bf16", 2, 8).hint == "f32"
    assert compiled_with == ["bf16", "f32"]  # a non-finite test batch: compiled again at f32


def test_openvino_device_names():
    gpus = ["CPU", "GPU.0", "GPU.1"]
    assert resolve_openvino_device("0", gpus) == "GPU.0"
    assert resolve_openvino_device("gpu.1", gpus) == "GPU.1"
    assert resolve_openvino_device("cpu", gpus) == "CPU"
    assert resolve_openvino_device("AUTO", gpus) == "AUTO"
    assert resolve_openvino_device("auto", ["CPU"]) == "CPU"
    assert resolve_openvino_device("HETERO:GPU,CPU", gpus) == "HETERO:GPU,CPU"
    for bad in ("0", "GPU", "HETERO:GPU,CPU", "NPU", "cuda:0"):
        with pytest.raises(DeviceError, match=r"it has: CPU"):
            resolve_openvino_device(bad, ["CPU"])
    with pytest.raises(DeviceError, match="never uses CUDA"):
        resolve_openvino_device("cuda", ["CPU"])


@pytest.mark.parametrize("device", ["HETERO:GPU,CPU", "0", "GPU.1"])
def test_missing_openvino_device_is_one_line_exit_2(device, tiny_clip, sample_images):
    from wwts.core.backends import openvino_device_names

    if any(n.startswith("GPU") for n in openvino_device_names()):
        pytest.skip("this machine has an Intel GPU")
    result = run_cli(sample_images, "--labels", "人,车", "-m", tiny_clip, "--backend", "openvino", "--device", device)
    assert result.exit_code == 2
    err = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "OpenVINO has no device" in err[0] and "it has: CPU" in err[0]


def test_openvino_auto_device_runs(tiny_clip, sample_images):
    run, records = _records(tiny_clip, sample_images, "openvino", device="AUTO")
    assert records and all(r.error is None for r in records)
    assert run.info()["backend"] == "openvino"
    from wwts.core.backends import openvino_device_names

    if not any(n.startswith(("GPU", "NPU")) for n in openvino_device_names()):
        _, on_cpu = _records(tiny_clip, sample_images, "openvino", device="CPU")
        _assert_close(on_cpu, records)  # AUTO on a machine with only a CPU: the CPU plugin's numbers


def test_onnxruntime_devices(tiny_clip, sample_images):
    from wwts.core.backends import devices

    label, providers = devices.resolve_ort_providers("auto")
    assert providers[-1][0] == "CPUExecutionProvider"
    assert devices.resolve_ort_providers("cpu") == ("cpu", (("CPUExecutionProvider", {}),))
    if "CUDAExecutionProvider" not in devices.onnxruntime_providers():
        with pytest.raises(DeviceError, match="ONNX Runtime has no device cuda:0; it has: cpu"):
            devices.resolve_ort_providers("cuda:0")


def test_missing_backend_says_what_to_install(tiny_clip, sample_images, monkeypatch):
    from wwts.core.backends import select

    monkeypatch.setitem(select.MODULES, "openvino", "no_such_module_wwts")
    result = run_cli(sample_images, "--labels", "人,车", "-m", tiny_clip, "--backend", "openvino")
    assert result.exit_code == 2
    assert 'pip install "wwts[openvino]"' in result.output


def test_torch_int8_is_retired_for_classify(tiny_clip, sample_images):
    result = run_cli(sample_images, "--labels", "人,车", "-m", tiny_clip, "--backend", "torch", "--quantize", "int8")
    assert result.exit_code == 2 and "retired" in result.output


def test_torch_backend_refuses_openvino_device_names(sample_images):
    with pytest.raises(UsageError, match="unknown device"):
        RunConfig(task="classify", inputs=(sample_images,), labels=LABELS, backend="torch", device="GPU.1")
    with pytest.raises(UsageError, match="unknown backend"):
        RunConfig(task="classify", inputs=(sample_images,), labels=LABELS, backend="tensorrt")


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_int8_runs_cached_and_agrees_roughly(backend, tiny_clip, sample_images, caplog):
    _, ref = _records(tiny_clip, sample_images, "torch")
    _, got = _records(tiny_clip, sample_images, backend, quantize="int8")
    assert all(r.error is None for r in got)
    for a, b in zip(ref, got):  # tiny random weights: int8 is checked loosely; make bench gates agreement
        assert abs(a.top_k[0].score - next(t.score for t in b.top_k if t.label == a.top_k[0].label)) < 0.1 \
            if any(t.label == a.top_k[0].label for t in b.top_k) else True
    precisions = {c.precision for c in export.list_conversions() if c.backend == backend and c.tower == "image"}
    assert precisions == {"int8"}
    if backend == "openvino":
        assert "calibration uses the first" in caplog.text
    before = _conversions()
    _records(tiny_clip, sample_images, backend, quantize="int8")
    assert _conversions() == before


def test_conversions_command_and_doctor(tiny_clip, sample_images):
    from typer.testing import CliRunner

    from wwts.cli.app import app

    _records(tiny_clip, sample_images, "onnxruntime")
    listed = CliRunner().invoke(app, ["conversions", "list"])
    assert listed.exit_code == 0 and "onnxruntime" in listed.output and "image" in listed.output
    doctor = CliRunner().invoke(app, ["doctor", "--json"])
    facts = json.loads(doctor.output)["backends"]
    assert facts["conversions"]["count"] == 2 and facts["auto"]["classify"]["reason"]
    # the rule ran (a failure would leave backend None and the exception as the reason)
    assert facts["auto"]["classify"]["backend"] in ("torch", "openvino") and facts["conversions"]["bundles"] == 1
    assert any(d["name"] == "CPU" for d in facts["openvino"]["devices"])
    cleared = CliRunner().invoke(app, ["conversions", "clear"])
    assert cleared.exit_code == 0 and "removed 2 conversions" in cleared.output
    assert export.list_conversions() == []


def test_backend_preset_from_environment(tiny_clip, sample_images, monkeypatch):
    monkeypatch.setenv("WWTS_BACKEND", "torch")
    run, _ = _records(tiny_clip, sample_images, "auto")
    assert run.info()["backend"] == "torch" and run.info()["backend_reason"] == "WWTS_BACKEND=torch"


def test_tower_store_names_are_the_ones_users_stores_hold():
    """Store keys record a tower's name: these strings were the encoder classes' paths, and
    changing one would orphan every embedding a user has stored."""
    from wwts.core.backends import tower_name

    assert tower_name("torch", "image") == "wwts.core.backends.torch.TorchImageEncoder"
    assert tower_name("torch", "text") == "wwts.core.backends.torch.TorchTextEncoder"
    assert tower_name("openvino", "image", "float32") == "wwts.core.backends.openvino.OpenVINOImageEncoder/float32"
    assert tower_name("openvino", "text") == "wwts.core.backends.openvino.OpenVINOTextEncoder"
    assert tower_name("onnxruntime", "image", "float32") == "wwts.core.backends.onnxruntime.OnnxImageEncoder/float32"
    assert tower_name("onnxruntime", "text") == "wwts.core.backends.onnxruntime.OnnxTextEncoder"


def test_lazy_tower_makes_its_tower_on_first_encode_and_releases_it():
    from wwts.core.backends import LazyTower, RuntimeTower

    made = []

    def make():
        made.append(1)
        return RuntimeTower(lambda inputs: inputs["pixel_values"].reshape(len(inputs["pixel_values"]), -1),
                            "onnxruntime", "image", precision="float32")

    lazy = LazyTower(make, "onnxruntime", "image", precision="float32")
    assert not lazy.ready and made == [] and lazy.store_name.endswith("OnnxImageEncoder/float32")
    out = lazy.encode(np.ones((2, 3, 2, 2), dtype=np.float32))
    assert out.shape == (2, 12) and np.allclose(np.linalg.norm(out, axis=1), 1.0)
    assert lazy.ready and made == [1] and lazy.load_s >= 0
    assert lazy.release() and not lazy.ready and not lazy.release()
    lazy.encode(np.ones((1, 3, 2, 2), dtype=np.float32))
    assert made == [1, 1]  # made again after the release
