"""Caption's ``--backend auto`` follows classify's size rule (``backends.route`` with
``CAPTION_PRIORS``, ``backends.caption_size_rule``): a small first caption run starts on PyTorch,
a large one (or many small ones) converts BLIP's towers for OpenVINO. CPU facts are pinned, timings
simulated (priors, or records written); the end-to-end run uses a tiny random BLIP."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("openvino")

from wwts.cli.app import app  # noqa: E402
from wwts.core.backends import caption_runtime, plan_backend, route  # noqa: E402
from wwts.core.hardware import speeds  # noqa: E402
from tests.tiny_caption_models import build_tiny_blip  # noqa: E402


#: Simulated figures of a machine where OpenVINO captions faster than torch (the shipped priors,
#: measured on an AVX2-only CPU, keep captions on torch: ``test_the_shipped_priors_caption_on_torch``).
FASTER_OPENVINO = {"torch/float32": (0.7, 8.0, 8.0), "torch/bfloat16": (1.8, 8.0, 8.0),
                   "openvino/float": (1.5, 10.0, 280.0)}


@pytest.fixture(autouse=True)
def faster_openvino(monkeypatch):
    monkeypatch.setattr(route, "CAPTION_PRIORS", FASTER_OPENVINO)


def test_the_shipped_priors_caption_on_torch(monkeypatch):
    monkeypatch.undo()
    routes = route.routes_for("float32", ["openvino/float"], {"openvino/float": False}, {},
                              priors=route.CAPTION_PRIORS)
    assert route.choose(100_000, 0, routes)[0].path == "torch/float32"
    # a saved conversion that this machine recorded faster is taken
    record = {"openvino/float": {"images_per_s": 2.0, "load_s": 5.0},
              "torch/float32": {"images_per_s": 0.7, "load_s": 8.0}}
    routes = route.routes_for("float32", ["openvino/float"], {"openvino/float": True}, record,
                              priors=route.CAPTION_PRIORS)
    assert route.choose(24, 0, routes)[0].path == "openvino/float"


def _routes(torch_precision: str = "float32", record: dict | None = None, saved: bool = False) -> list:
    return route.routes_for(torch_precision, ["openvino/float"], {"openvino/float": saved}, record or {},
                            priors=route.CAPTION_PRIORS)


def test_a_small_caption_run_starts_on_torch_and_a_large_one_converts():
    small, why = route.choose(24, 0, _routes())
    assert small.path == "torch/float32" and "finishes 24 photos first" in why and "repays from about" in why
    large, why = route.choose(2_000, 0, _routes())
    assert large.path == "openvino/float" and "repay converting" in why


def test_on_amx_torch_bf16_captions_and_openvino_f32_never_repays():
    assert route.choose(10_000, 0, _routes("bfloat16"))[0].path == "torch/bfloat16"


def test_caption_records_decide_and_many_small_runs_convert_in_the_end():
    record = {"torch/float32": {"images_per_s": 0.5, "load_s": 9.0},
              "openvino/float": {"images_per_s": 1.2, "convert_s": 40.0}}
    pick, why = route.choose(100, 0, _routes(record=record))
    assert pick.path == "openvino/float" and "about 31 s more to start" in why
    routes, done = _routes(), 0
    while route.choose(24, done, routes)[0].saved:
        done += 24
        assert done < 10_000
    assert done + 24 >= route.repay_photos(*routes) > done


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory):
    return build_tiny_blip(tmp_path_factory.mktemp("route") / "blip")


@pytest.fixture
def x86_cpu(monkeypatch):
    """An x86 CPU without AMX or accelerator, OpenVINO installed, torch float32 on the CPU."""
    from wwts.core import hardware
    from wwts.core.backends import devices, select

    monkeypatch.setattr(select, "is_x86", lambda: True)
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(hardware, "accelerator_present", lambda: False)
    monkeypatch.setattr(hardware, "cpu_dtype_without_torch", lambda *a: "float32")


@pytest.mark.own_conversions
def test_plan_backend_sizes_a_caption_run(x86_cpu, blip_folder, tmp_path):
    paths = [tmp_path / f"p{i}.jpg" for i in range(5_000)]
    small = plan_backend("auto", "auto", task="caption", threads=2, paths=paths[:6], model=str(blip_folder))
    assert small.name == "torch" and small.reason.startswith("auto: PyTorch float32 finishes 6 photos")
    large = plan_backend("auto", "auto", task="caption", threads=2, paths=paths, model=str(blip_folder))
    assert large.name == "openvino" and "repay converting for OpenVINO float" in large.reason
    # an explicit backend is never sized
    assert plan_backend("openvino", "auto", task="caption", threads=2, paths=paths[:6],
                        model=str(blip_folder)).name == "openvino"


def _caption(folder, images, out):
    result = CliRunner().invoke(app, ["caption", str(images), "--model", str(folder), "--max-new-tokens", "4",
                                      "--threads", "2", "--no-store", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text(encoding="utf-8"))["run"]


@pytest.mark.own_conversions
def test_caption_runs_are_recorded_and_their_sum_converts(x86_cpu, blip_folder, six, tmp_path):
    first = _caption(blip_folder, six, tmp_path / "a.json")
    assert first["backend"] == "torch" and "finishes 6 photos first" in first["backend_reason"]
    record = speeds.model_record(str(blip_folder), 2)
    assert record["images"] == 6 and "torch/float32" in record["paths"]
    # this machine has captioned many photos with this model: the next small run converts
    speeds.record_run(str(blip_folder), 2, "torch/float32", images=5_000, images_per_s=0.7, load_s=8.0,
                      converted=False)
    before = caption_runtime.CONVERSIONS["caption"]
    second = _caption(blip_folder, six, tmp_path / "b.json")
    assert second["backend"] == "openvino" and "(5006 before on this machine) repay" in second["backend_reason"]
    assert caption_runtime.CONVERSIONS["caption"] == before + 2
    slot = speeds.model_record(str(blip_folder), 2)["paths"]["openvino/float"]
    assert "convert_s" in slot and "load_s" not in slot  # the conversion's seconds, not a saved start's
    # the saved towers now start at once: a small run takes them, and records a saved start
    third = _caption(blip_folder, six, tmp_path / "c.json")
    assert third["backend"] == "openvino" and caption_runtime.CONVERSIONS["caption"] == before + 2
    assert "load_s" in speeds.model_record(str(blip_folder), 2)["paths"]["openvino/float"]
