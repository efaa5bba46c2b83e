"""``--backend auto``'s size rule (``backends.route``, ``backends.size_rule``), the int8 gate
(``backends.int8_gate``) and the store's precisions. CPU facts are pinned; timings are simulated
(records written or priors), never measured."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from wwts.core import engine
from wwts.core.backends import int8_gate, is_x86, plan_backend, route
from wwts.core.config import RunConfig
from wwts.core.hardware import speeds

LABELS = ("人", "车", "猫", "花")
RUNTIMES = ["openvino/float", "openvino/int8"]
needs_nncf = pytest.mark.skipif(importlib.util.find_spec("nncf") is None or importlib.util.find_spec("openvino") is None
                                or not is_x86(), reason="the int8 route is OpenVINO's NNCF on an x86 CPU")


def test_without_records_a_small_folder_starts_at_once_and_a_large_one_converts():
    routes = route.routes_for("float32", RUNTIMES, {}, {})  # a machine's first run: priors only
    small, why = route.choose(100, 0, routes)
    assert small.path == "torch/float32" and "finishes 100 photos first" in why and "repays from about" in why
    large, why = route.choose(10_000, 0, routes)
    assert large.path == "openvino/int8" and "repay converting" in why
    assert "no conversion recorded here yet" in why  # no number that this machine did not measure


def test_on_amx_torch_bf16_starts_and_only_int8_is_worth_converting():
    routes = route.routes_for("bfloat16", ["openvino/int8"], {}, {})
    assert route.choose(100, 0, routes)[0].path == "torch/bfloat16"
    assert route.choose(10_000, 0, routes)[0].path == "openvino/int8"


def test_this_machines_records_decide_and_name_the_conversion_time():
    record = {"openvino/float": {"images_per_s": 20.0, "convert_s": 8.0, "load_s": 1.0},
              "torch/float32": {"images_per_s": 4.0, "load_s": 6.0}}
    pick, why = route.choose(100, 0, route.routes_for("float32", ["openvino/float"], {}, record))
    assert pick.path == "openvino/float" and "about 2 s more to start" in why
    # a saved conversion needs none: it starts at once and finishes first
    pick, why = route.choose(20, 0, route.routes_for("float32", ["openvino/float"], {"openvino/float": True}, record))
    assert pick.path == "openvino/float" and "finishes 20 photos first" in why


def test_a_slow_machines_records_scale_the_priors_it_has_no_record_for():
    record = {"torch/float32": {"images_per_s": 0.4, "load_s": 60.0}}  # 10x slower than the priors' machine
    assert route.pace(record) == pytest.approx(0.1)
    torch_route, float_route = route.routes_for("float32", ["openvino/float"], {}, record)
    assert float_route.images_per_s == pytest.approx(0.8) and float_route.start_s == pytest.approx(250.0)
    assert not float_route.recorded and torch_route.recorded
    assert route.pace({"torch/float32": {"images_per_s": 40.0, "load_s": 1.0}}) == 1.0  # never above the priors


def test_small_runs_repeated_convert_once_their_sum_repays_it():
    routes = route.routes_for("float32", ["openvino/float"], {}, {})
    now, conv = routes
    done, runs = 0, 0
    while route.choose(92, done, routes)[0].saved:
        done, runs = done + 92, runs + 1
        assert runs < 100
    assert runs >= 1 and done + 92 >= route.repay_photos(now, conv) > done


@pytest.fixture
def cpu(monkeypatch, request):
    """Pin the CPU facts the rule reads: AMX or not (parametrised), an int8 dot-product instruction
    (VNNI), no accelerator."""
    from wwts.core import hardware
    from wwts.core.backends import devices

    monkeypatch.setattr(devices, "cpu_has_amx", lambda: getattr(request, "param", False))
    monkeypatch.setattr(devices, "cpu_has_int8_dot", lambda: True)
    monkeypatch.setattr(hardware, "accelerator_present", lambda: False)


@needs_nncf
@pytest.mark.parametrize("cpu", [False, True], indirect=True, ids=["no-amx", "amx"])
def test_plan_backend_sizes_the_run(cpu, tiny_clip, tmp_path):
    paths = [tmp_path / f"p{i}.jpg" for i in range(10_000)]
    small = plan_backend("auto", "auto", task="classify", threads=2, paths=paths[:100], model=str(tiny_clip))
    assert small.name == "torch" and small.reason.startswith("auto: ") and "photos" in small.reason
    large = plan_backend("auto", "auto", task="classify", threads=2, paths=paths, model=str(tiny_clip))
    assert (large.name, large.int8) == ("openvino", True)
    assert large.gate and not set(large.gate) & set(large.calibration_paths)  # checked on other photos
    # opting out: --dtype float32 (or --quantize none) never gets int8
    plain = plan_backend("auto", "auto", task="classify", threads=2, paths=paths, model=str(tiny_clip),
                         dtype="float32")
    assert not plain.int8
    # a refused int8 is remembered: never chosen again for this model on this machine
    speeds.record_int8(str(tiny_clip), 2, {"passed": False})
    again = plan_backend("auto", "auto", task="classify", threads=2, paths=paths, model=str(tiny_clip))
    assert not again.int8


needs_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or not is_x86(),
                               reason="ONNX Runtime's dynamic int8 on an x86 CPU")


@needs_ort
def test_without_an_int8_dot_product_instruction_int8_is_onnxruntimes(cpu, monkeypatch, tiny_clip, tmp_path):
    """An AVX2-only CPU (no VNNI, no AMX) runs OpenVINO's int8 about as fast as float: a large
    folder's int8 route is ONNX Runtime's dynamic int8 (gated as OpenVINO's), and the reason says why."""
    from wwts.core.backends import devices

    monkeypatch.setattr(devices, "cpu_has_int8_dot", lambda: False)
    paths = [tmp_path / f"p{i}.jpg" for i in range(10_000)]
    large = plan_backend("auto", "auto", task="classify", threads=2, paths=paths, model=str(tiny_clip))
    assert (large.name, large.int8, len(large.gate)) == ("onnxruntime", True, 32)
    assert large.providers and "this CPU has no VNNI or AMX int8 instructions" in large.reason
    small = plan_backend("auto", "auto", task="classify", threads=2, paths=paths[:100], model=str(tiny_clip))
    assert small.name == "torch" and "no VNNI" not in small.reason


def test_the_int8_dot_product_instructions_are_read_from_the_cpu_flags(monkeypatch):
    from wwts.core import hardware
    from wwts.core.backends import devices

    for flags, want in ((frozenset({"avx2"}), False), (frozenset({"avx2", "avx512f", "avx512_vnni"}), True),
                        (frozenset({"avx2", "avx_vnni"}), True), (frozenset({"avx2", "amx_int8"}), True)):
        monkeypatch.setattr(hardware, "cpu_features", lambda f=flags: hardware.cpu.cpu_features(f))
        assert devices.cpu_has_int8_dot() is want, flags


def _photos(sample_images: Path, folder: Path, count: int) -> Path:
    """``count`` distinct photos (sample images with a byte appended)."""
    folder.mkdir()
    sources = sorted(p for p in sample_images.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    for i in range(count):
        src = sources[i % len(sources)]
        (folder / f"p{i:03d}{src.suffix}").write_bytes(src.read_bytes() + bytes([i]))
    return folder


def _run(model, images, **kw):
    config = RunConfig(task="classify", inputs=(images,), labels=LABELS, model=str(model), backend="auto",
                       batch_size=4, **kw)
    run = engine.start(config)
    return run, list(run)


@pytest.fixture
def int8_pays(monkeypatch, cpu):
    """Priors under which int8 repays its conversion on any run (simulated timings)."""
    monkeypatch.setattr(route, "PRIORS", {**route.PRIORS, "torch/float32": (0.01, 1.0, 1.0),
                                          "openvino/float": (0.02, 1.0, 1.0), "openvino/int8": (1000.0, 1.0, 1.0)})


@needs_nncf
@pytest.mark.own_conversions
def test_a_disagreeing_int8_is_refused_and_remembered(int8_pays, monkeypatch, tiny_clip, sample_images, tmp_path):
    photos = _photos(sample_images, tmp_path / "photos", 24)
    noise = np.random.default_rng(0)
    monkeypatch.setattr(int8_gate, "PERTURB", lambda out: noise.standard_normal(out.shape).astype(np.float32))
    run, records = _run(tiny_clip, photos)
    assert all(r.error is None for r in records)
    assert run.info()["quantize"] is None and run.task.image_encoder.manifest["fields"]["precision"] == "float"
    verdict = speeds.model_record(str(tiny_clip), run.threads)["int8"]
    assert verdict["passed"] is False and verdict["photos"] == 6 and verdict["prompts"] >= len(LABELS)
    nxt = plan_backend("auto", "auto", task="classify", threads=run.threads, paths=list(photos.iterdir()),
                       model=str(tiny_clip))
    assert not nxt.int8 and not nxt.gate  # remembered: not tried again


@needs_nncf
@pytest.mark.own_conversions
def test_an_agreeing_int8_is_kept_and_the_store_keeps_precisions_apart(int8_pays, tiny_clip, sample_images, tmp_path):
    photos = _photos(sample_images, tmp_path / "photos", 24)
    store = dict(store=True, store_dir=str(tmp_path / "store"))
    run, records = _run(tiny_clip, photos, **store)
    verdict = speeds.model_record(str(tiny_clip), run.threads)["int8"]
    assert verdict["passed"] is True, verdict
    assert run.info()["quantize"] == "int8" and run.task.image_encoder.manifest["fields"]["precision"] == "int8"
    # a float run never gets the int8 embeddings from the store
    plain, _ = _run(tiny_clip, photos, quantize="none", **store)
    assert plain.info()["quantize"] == "none" and plain.stats.cached == 0
    # the next default run starts from the saved, checked int8 (recorded fastest: simulated, the tiny
    # model's real int8 is no faster) and finds its own embeddings
    speeds.record_run(str(tiny_clip), run.threads, "openvino/int8", images=0, images_per_s=1e6, load_s=0.1,
                      converted=False)
    again, _ = _run(tiny_clip, photos, **store)
    assert again.info()["quantize"] == "int8" and again.stats.cached == len(records)
    assert not again.task.image_encoder.backend == "torch"


@needs_ort
@pytest.mark.own_conversions
def test_onnxruntime_int8_goes_through_the_same_gate(int8_pays, monkeypatch, tiny_clip, sample_images, tmp_path):
    from wwts.core.backends import devices

    monkeypatch.setattr(devices, "cpu_has_int8_dot", lambda: False)
    monkeypatch.setattr(route, "PRIORS", {**route.PRIORS, "onnxruntime/int8": (1000.0, 1.0, 1.0)})
    photos = _photos(sample_images, tmp_path / "photos", 24)
    run, records = _run(tiny_clip, photos)
    assert all(r.error is None for r in records) and run.info()["backend"] == "onnxruntime"
    verdict = speeds.model_record(str(tiny_clip), run.threads)["int8"]
    assert verdict["passed"] is True and verdict["photos"] == 6, verdict
    assert run.info()["quantize"] == "int8" and run.task.image_encoder.manifest["fields"]["precision"] == "int8"


@needs_nncf
def test_doctor_says_what_auto_does_for_100_and_10000_photos(cpu, tiny_clip):
    from wwts.core.backends.facts import backend_facts

    sized = backend_facts("cpu", str(tiny_clip), 2)["auto"]["sized"]
    assert sized["100"]["backend"] == "torch" and "finishes 100 photos first" in sized["100"]["reason"]
    assert (sized["10000"]["backend"], sized["10000"]["int8"]) == ("openvino", True)
    assert "repay converting" in sized["10000"]["reason"]
