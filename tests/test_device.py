"""Device, dtype and thread choice (core.hardware) and the pre-import environment (core.env).

No GPU is needed: CUDA / MPS / XPU are simulated by monkeypatching torch's queries and
``wwts.core.hardware.device.probe``; CPU flags by monkeypatching ``hardware.cpu.cpu_flags``.
"""

from __future__ import annotations

import os
import json
import platform
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from wwts.core import hardware as dv
from wwts.core.hardware import cpu, nvidia
from wwts.core.hardware import device as sel
from wwts.core import env
from wwts.core.errors import DeviceError

GiB = 1024**3


def fake_gpus(monkeypatch, gpus, *, cuda_version="12.4", arch_list=("sm_80", "sm_90")):
    """Make torch.cuda report ``gpus``: dicts with name, free, total, cap, uuid."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))

    def props(i):
        g = gpus[i if not isinstance(i, torch.device) else (i.index or 0)]
        major, minor = g.get("cap", (8, 0))
        return SimpleNamespace(name=g["name"], major=major, minor=minor, total_memory=g.get("total", 16 * GiB),
                               multi_processor_count=80, uuid=g.get("uuid", f"uuid-{i}"))

    def mem_get_info(i=None):
        g = gpus[i if isinstance(i, int) else (i.index or 0) if i is not None else 0]
        return g["free"], g.get("total", 16 * GiB)

    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: props(i).name)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
    monkeypatch.setattr(torch.version, "cuda", cuda_version)
    monkeypatch.setattr(nvidia, "nvml_facts", lambda: None)


@pytest.fixture
def no_mps_xpu(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)


@pytest.fixture
def probe_log(monkeypatch):
    """Record probed devices; devices named in ``log.fail`` fail their probe."""
    log = SimpleNamespace(calls=[], fail=set())

    def probe(device):
        log.calls.append(str(device))
        return "RuntimeError: simulated failure" if str(device) in log.fail else None

    monkeypatch.setattr(sel, "probe", probe)
    return log


# ------------------------------------------------------------------ auto choice


def test_auto_on_this_machine_is_a_proven_cpu():
    choice = dv.select_device("auto")
    assert choice.device == torch.device("cpu")
    assert choice.auto is True and choice.tried == []
    assert "no usable" in choice.reason


def test_auto_order_cuda_then_mps_then_xpu_then_cpu(monkeypatch, probe_log):
    fake_gpus(monkeypatch, [{"name": "GPU A", "free": 8 * GiB}])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    assert dv.select_device("auto").device == torch.device("cuda", 0)

    probe_log.fail = {"cuda:0"}
    choice = dv.select_device("auto")
    assert choice.device.type == "mps"
    assert choice.tried == [("cuda:0", "RuntimeError: simulated failure")]

    probe_log.fail = {"cuda:0", "mps"}
    assert dv.select_device("auto").device.type == "xpu"

    probe_log.calls.clear()
    probe_log.fail = {"cuda:0", "mps", "xpu"}
    choice = dv.select_device("auto")
    assert choice.device == torch.device("cpu")
    assert probe_log.calls == ["cuda:0", "mps", "xpu"]
    assert [d for d, _ in choice.tried] == ["cuda:0", "mps", "xpu"]
    assert "failed" in choice.reason


def test_auto_picks_the_gpu_with_most_free_memory(monkeypatch, no_mps_xpu, probe_log):
    fake_gpus(monkeypatch, [{"name": "A", "free": 2 * GiB}, {"name": "B", "free": 10 * GiB},
                            {"name": "C", "free": 5 * GiB}])
    choice = dv.select_device("auto")
    assert choice.device == torch.device("cuda", 1)
    assert "most free memory of 3" in choice.reason


def test_failing_probe_falls_through_to_next_most_free_gpu(monkeypatch, no_mps_xpu, probe_log, caplog):
    fake_gpus(monkeypatch, [{"name": "A", "free": 2 * GiB}, {"name": "B", "free": 10 * GiB},
                            {"name": "C", "free": 5 * GiB}])
    probe_log.fail = {"cuda:1"}
    with caplog.at_level("WARNING", logger="wwts.core.hardware.device"):
        choice = dv.select_device("auto")
    assert choice.device == torch.device("cuda", 2)
    assert choice.tried == [("cuda:1", "RuntimeError: simulated failure")]
    assert probe_log.calls == ["cuda:1", "cuda:2"]
    assert "cuda:1 failed its probe" in caplog.text


def test_free_memory_comes_from_nvml_matched_by_uuid(monkeypatch, no_mps_xpu, probe_log):
    fake_gpus(monkeypatch, [{"name": "A", "free": 1, "uuid": "aaaa"}, {"name": "B", "free": 1, "uuid": "bbbb"}])

    def no_context(*a, **k):
        raise AssertionError("mem_get_info creates a CUDA context; NVML should answer")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_context)
    # NVML lists GPUs in PCI order: B first. Its UUIDs carry a "GPU-" prefix torch's lack.
    monkeypatch.setattr(nvidia, "nvml_facts", lambda: {"gpus": [
        {"index": 0, "uuid": "bbbb", "memory_free": 3 * GiB},
        {"index": 1, "uuid": "aaaa", "memory_free": 7 * GiB}]})
    assert dv.cuda_free_memory() == {0: 7 * GiB, 1: 3 * GiB}
    assert dv.select_device("auto").device == torch.device("cuda", 0)


def test_cuda_query_that_raises_is_recorded_and_auto_falls_back(monkeypatch, no_mps_xpu):
    def broken():
        raise RuntimeError("CUDA driver initialization failed\nmore text")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    choice = dv.select_device("auto")
    assert choice.device == torch.device("cpu")
    assert choice.tried == [("cuda", "RuntimeError: CUDA driver initialization failed")]
    assert "no cuda" in dv.available_summary()  # never raises
    with pytest.raises(DeviceError, match="CUDA fails to start"):
        dv.select_device("cuda")


# ------------------------------------------------------------------ explicit devices


def test_explicit_cuda_on_this_cpu_only_build_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(nvidia, "nvidia_driver_facts", lambda: {"gpus": []})
    if torch.cuda.is_available():  # pragma: no cover - only on a GPU machine
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError) as info:
        dv.select_device("cuda")
    msg = str(info.value)
    assert "--device cuda" in msg and "CPU-only build" in msg and "Available:" in msg
    assert "\n" not in msg
    assert info.value.exit_code == 2


def test_explicit_cuda_error_names_the_gpu_the_driver_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(nvidia, "nvidia_driver_facts", lambda: {"gpus": [{"name": "NVIDIA GeForce RTX 4090"}]})
    with pytest.raises(DeviceError, match=r"NVIDIA GPU is present \(NVIDIA GeForce RTX 4090\).*CPU-only"):
        dv.select_device("cuda:0")


def test_explicit_cuda_hidden_by_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceError, match="CUDA_VISIBLE_DEVICES"):
        dv.select_device("cuda")


def test_explicit_cuda_index_out_of_range(monkeypatch, probe_log):
    fake_gpus(monkeypatch, [{"name": "A", "free": GiB}])
    with pytest.raises(DeviceError) as info:
        dv.select_device("cuda:3")
    msg = str(info.value)
    assert "--device cuda:3" in msg and "only 1 CUDA device" in msg and "cuda:0" in msg
    assert probe_log.calls == []


def test_explicit_cuda_index_is_honoured_not_replaced(monkeypatch, probe_log):
    fake_gpus(monkeypatch, [{"name": "A", "free": 9 * GiB}, {"name": "B", "free": GiB}])
    choice = dv.select_device("cuda:1")
    assert choice.device == torch.device("cuda", 1) and choice.auto is False
    assert dv.select_device("cuda").device == torch.device("cuda", 0)


def test_explicit_device_failing_its_probe_raises_instead_of_falling_back(monkeypatch, probe_log):
    fake_gpus(monkeypatch, [{"name": "A", "free": GiB}])
    probe_log.fail = {"cuda:0"}
    with pytest.raises(DeviceError, match=r"--device cuda:0 failed a test operation \(RuntimeError: simulated"):
        dv.select_device("cuda:0")


def test_explicit_mps_and_xpu_unavailable(monkeypatch, no_mps_xpu):
    with pytest.raises(DeviceError) as info:
        dv.select_device("mps")
    assert "--device mps" in str(info.value) and "Apple" in str(info.value) and "Available:" in str(info.value)
    with pytest.raises(DeviceError, match="--device xpu.*no Intel XPU"):
        dv.select_device("xpu")
    with pytest.raises(DeviceError, match="unknown device"):
        dv.select_device("tpu")


def test_explicit_cpu_is_always_usable():
    choice = dv.select_device("cpu")
    assert choice.device == torch.device("cpu") and choice.auto is False


def test_probe_reports_a_real_failure():
    assert dv.probe(torch.device("cpu")) is None
    reason = dv.probe(torch.device("meta"))  # .item() cannot run on meta tensors
    assert reason is not None and reason.startswith("RuntimeError")


# ------------------------------------------------------------------ dtype


def test_cuda_dtype_by_compute_capability(monkeypatch):
    fake_gpus(monkeypatch, [{"name": "NVIDIA A100", "free": GiB, "cap": (8, 0)},
                            {"name": "Tesla T4", "free": GiB, "cap": (7, 5)}])
    assert dv.select_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert dv.select_dtype(torch.device("cuda", 1)) == torch.float16
    assert dv.select_dtype(torch.device("cuda", 1), "float16") == torch.float16
    assert dv.select_dtype(torch.device("cuda", 1), "float32") == torch.float32
    with pytest.raises(DeviceError) as info:
        dv.select_dtype(torch.device("cuda", 1), "bfloat16")
    assert "Tesla T4" in str(info.value) and "8.0" in str(info.value) and "7.5" in str(info.value)


def test_mps_defaults_to_float32():
    assert dv.select_dtype(torch.device("mps")) == torch.float32


def _simulate_cpu(monkeypatch, flags: set[str], float32_s: float | None, bfloat16_s: float | None,
                  name: str = "Simulated CPU") -> None:
    """A CPU with these flags whose calibration block takes these times (``None``: it fails)."""
    from wwts.core.hardware import calibration

    def timing(batch_size, rounds=3):
        if float32_s is None:
            raise RuntimeError("simulated: no bf16 kernels")
        return {"float32": float32_s, "bfloat16": bfloat16_s}

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(cpu, "cpu_model_name", lambda: name)
    monkeypatch.setattr(calibration, "time_block", timing)


#: The two kinds of machine this project runs on (measured, issue 9): an AMD EPYC Zen 4 VM with
#: AVX512-BF16 and no AMX where bf16 pays (1.6x), and an Intel VM showing the flag where bf16 is
#: slower (0.73x). Plus a CPU without native bf16, which is never measured.
ZEN4 = ({"avx2", "avx512f", "avx512_bf16"}, 0.16, 0.10)
INTEL_VM = ({"avx2", "avx512f", "avx512_bf16"}, 0.073, 0.10)
AMX = ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, 0.20, 0.05)
NO_BF16 = ({"avx2", "avx512f"}, None, None)


@pytest.mark.skipif(platform.machine().lower() in ("arm64", "aarch64"), reason="x86 flag names")
@pytest.mark.parametrize("cpu, expected", [(ZEN4, torch.bfloat16), (INTEL_VM, torch.float32),
                                           (AMX, torch.bfloat16), (NO_BF16, torch.float32)],
                         ids=["zen4", "intel-vm", "amx", "no-bf16"])
def test_cpu_auto_dtype_follows_the_measured_speed(monkeypatch, cpu, expected):
    _simulate_cpu(monkeypatch, *cpu)
    assert dv.select_dtype(torch.device("cpu"), "auto") == expected
    reason = dv.dtype_reason(torch.device("cpu"), expected)
    assert ("measured" in reason) == (cpu is not NO_BF16), reason


def test_cpu_auto_dtype_without_a_measurement_is_float32(monkeypatch):
    _simulate_cpu(monkeypatch, {"avx512f", "avx512_bf16"}, None, None)  # the calibration fails
    assert dv.select_dtype(torch.device("cpu"), "auto") == torch.float32
    assert "could not be measured" in dv.dtype_reason(torch.device("cpu"), torch.float32)


def test_bf16_calibration_is_cached_per_cpu_flags_torch_threads_and_batch(monkeypatch, keep_torch_threads):
    from wwts.core.hardware import calibration

    _simulate_cpu(monkeypatch, *ZEN4)
    calls = []
    timing = calibration.time_block
    monkeypatch.setattr(calibration, "time_block", lambda b, rounds=3: calls.append(b) or timing(b))
    first = dv.cpu_bf16_calibration(8)
    assert first["speedup"] == pytest.approx(1.6) and first["measured"][:4].isdigit()
    assert "Simulated CPU" in first["key"] and "batch 8" in first["key"] and torch.__version__ in first["key"]
    assert dv.cpu_bf16_calibration(8)["speedup"] == pytest.approx(1.6) and calls == [8]  # cached
    dv.cpu_bf16_calibration(4)  # another batch size: measured
    torch.set_num_threads(1)
    dv.cpu_bf16_calibration(8)  # another thread count: measured
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(ZEN4[0] | {"amx_bf16"}))
    dv.cpu_bf16_calibration(8)  # the same CPU name with other flags (a VM moved host): measured
    assert calls == [8, 4, 8, 8]
    dv.cpu_bf16_calibration(8, refresh=True)  # doctor --recalibrate
    assert calls == [8, 4, 8, 8, 8]
    data = json.loads(calibration.cache_file().read_text(encoding="utf-8"))
    assert data["version"] == calibration.CACHE_VERSION and len(data["entries"]) == 4


def test_a_stale_or_foreign_calibration_file_is_ignored(monkeypatch):
    from wwts.core.hardware import calibration

    _simulate_cpu(monkeypatch, *INTEL_VM)
    path = calibration.cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    # what wwts <= 0.1 wrote: one number per "CPU family|torch|threads", which a VM moved host kept
    path.write_text(json.dumps({f"Simulated CPU|{torch.__version__}|{torch.get_num_threads()}": 1.582}))
    assert dv.select_dtype(torch.device("cpu"), "auto") == torch.float32
    path.write_text("{not json")
    assert dv.cpu_bf16_speedup() == pytest.approx(0.73)


def test_the_suite_never_uses_the_users_cache():
    from wwts.core.hardware import calibration

    home_cache = Path(os.path.expanduser("~")) / ".cache"
    assert not calibration.cache_file().is_relative_to(home_cache)
    assert not Path(os.environ["HF_HOME"]).is_relative_to(home_cache)


@pytest.mark.real_calibration
def test_real_calibration_measures_a_ratio(keep_torch_threads):
    torch.set_num_threads(1)
    entry = dv.cpu_bf16_calibration(1)
    if entry is None:  # no bf16 autocast kernels on this CPU: nothing to measure
        pytest.skip("bf16 could not be measured here")
    assert entry["speedup"] > 0 and entry["float32_s"] > 0 and entry["bfloat16_s"] > 0


def test_cpu_float16_needs_native_fp16(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    with pytest.raises(DeviceError, match="--dtype float16 is not usable on cpu.*bfloat16"):
        dv.select_dtype(torch.device("cpu"), "float16")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_fp16"}))
    assert dv.select_dtype(torch.device("cpu"), "float16") == torch.float16


def test_explicit_bf16_on_cpu_without_native_support_is_allowed_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2"}))
    with caplog.at_level("WARNING", logger="wwts.core.hardware.dtype"):
        assert dv.select_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16
    assert "slower than float32" in caplog.text


def test_dtype_names_and_objects():
    assert dv.select_dtype(torch.device("cpu"), torch.float32) == torch.float32
    with pytest.raises(DeviceError, match="unknown dtype"):
        dv.select_dtype(torch.device("cpu"), "int4")


def test_cpu_features_from_flags():
    if platform.machine().lower() in ("arm64", "aarch64"):
        feats = dv.cpu_features(frozenset({"asimd", "bf16"}))
        assert feats["NEON"] and feats["Arm BF16"] and not feats["SVE"]
    else:
        feats = dv.cpu_features(frozenset({"avx2", "avx512f", "amx_bf16", "avx512_vnni"}))
        assert feats["AVX2"] and feats["AVX-512"] and feats["AMX-BF16"] and feats["AVX512-VNNI"]
        assert not feats["AVX512-BF16"] and "NEON" not in feats


def test_autocast_runs_matmul_in_the_low_precision_dtype():
    x = torch.randn(4, 4)
    with dv.autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
    with dv.autocast(torch.device("cpu"), torch.float32):
        assert (x @ x).dtype == torch.float32


def test_is_oom_error():
    assert dv.is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert dv.is_oom_error(torch.OutOfMemoryError("boom"))
    assert dv.is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried..."))
    assert not dv.is_oom_error(RuntimeError("shape mismatch"))
    assert not dv.is_oom_error(ValueError("out of memory"))


# ------------------------------------------------------------------ threads


@pytest.fixture
def keep_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_threads_default_to_physical_cores(monkeypatch, keep_torch_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "physical_cores", lambda: 3)
    assert dv.resolve_threads() == (3, "physical cores")
    assert dv.configure_threads() == 3
    assert torch.get_num_threads() == 3


def test_omp_num_threads_is_respected_and_explicit_wins(monkeypatch, keep_torch_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert dv.resolve_threads() == (1, "OMP_NUM_THREADS")
    assert dv.configure_threads() == 1 and torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"  # read, never written
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")  # nested form: outer level counts
    assert dv.resolve_threads() == (2, "OMP_NUM_THREADS")
    assert dv.resolve_threads(5) == (5, "--threads")
    assert dv.configure_threads(2) == 2 and torch.get_num_threads() == 2


def test_bad_omp_num_threads_is_ignored(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    monkeypatch.setattr(cpu, "physical_cores", lambda: 4)
    assert dv.resolve_threads() == (4, "physical cores")


def test_usable_cpus_respects_a_cgroup_quota(monkeypatch):
    monkeypatch.setattr(cpu, "_cgroup_cpu_limit", lambda: 1.5)
    assert dv.usable_cpus() <= 2
    monkeypatch.setattr(cpu, "_cgroup_cpu_limit", lambda: 0.5)
    assert dv.usable_cpus() == 1
    assert dv.physical_cores() == 1


@pytest.mark.parametrize("cpus, threads, requested, accel, expected", [
    (2, 2, None, False, 1),     # torch takes every CPU: still one decode thread
    (16, 8, None, False, 4),    # free CPUs, capped at CPU_DECODE_CAP
    (16, 14, None, False, 2),   # only what torch leaves
    (16, 8, None, True, 8),     # accelerator: all but one, capped at ACCEL_DECODE_CAP
    (4, 4, None, True, 3),
    (1, 1, None, True, 1),
    (2, 2, 3, False, 3),        # explicit wins
])
def test_decode_workers_rule(monkeypatch, cpus, threads, requested, accel, expected):
    monkeypatch.setattr(cpu, "usable_cpus", lambda: cpus)
    assert dv.decode_workers(threads, requested, accelerator=accel) == expected


def test_decode_workers_warns_when_explicit_oversubscribes(monkeypatch, caplog):
    monkeypatch.setattr(cpu, "usable_cpus", lambda: 2)
    with caplog.at_level("WARNING", logger="wwts.core.hardware.cpu"):
        dv.decode_workers(2, 4)
    assert "compete" in caplog.text


# ------------------------------------------------------------------ estimates and plan


def test_describe_plan_gives_reasons(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "physical_cores", lambda: 2)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2"}))
    choice = dv.DeviceChoice(torch.device("cpu"), True, [("cuda:0", "RuntimeError: no kernel image")],
                             "every accelerator failed its test")
    text = dv.describe_plan("classify", choice, torch.float32, 2, 8)
    assert text.startswith("classify on cpu (auto: every accelerator failed its test")
    assert "cuda:0 (RuntimeError: no kernel image)" in text
    assert "float32 (CPU without native bf16" in text
    assert "2 threads (physical cores)" in text and "batch 8 (default for cpu)" in text
    assert "images/s" not in text  # no speed is promised that was not measured here
    text = dv.describe_plan("caption", choice, torch.bfloat16, 5, 2)
    assert "5 threads (--threads)" in text and "batch 2 (--batch-size)" in text
    assert "bfloat16 (as requested" in text


def test_describe_plan_names_the_gpu(monkeypatch):
    fake_gpus(monkeypatch, [{"name": "NVIDIA H100", "free": GiB, "cap": (9, 0)}])
    choice = dv.DeviceChoice(torch.device("cuda", 0), True, [], "the only CUDA GPU")
    text = dv.describe_plan("classify", choice, torch.bfloat16, 4, 64)
    assert "cuda:0 (NVIDIA H100)" in text and "compute capability 9.0" in text
    assert "out-of-memory" in text and "images/s" not in text


# ------------------------------------------------------------------ driver facts without CUDA


def test_nvml_facts_from_a_simulated_pynvml(monkeypatch):
    fake = types.ModuleType("pynvml")
    handles = [SimpleNamespace(name=b"Tesla T4", uuid="GPU-ABCD", cap=(7, 5))]
    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: None
    fake.nvmlSystemGetDriverVersion = lambda: "550.54"
    fake.nvmlSystemGetCudaDriverVersion = lambda: 12040
    fake.nvmlDeviceGetCount = lambda: len(handles)
    fake.nvmlDeviceGetHandleByIndex = lambda i: handles[i]
    fake.nvmlDeviceGetName = lambda h: h.name
    fake.nvmlDeviceGetUUID = lambda h: h.uuid
    fake.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(total=16 * GiB, free=15 * GiB, used=GiB)
    fake.nvmlDeviceGetCudaComputeCapability = lambda h: h.cap
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    facts = dv.nvml_facts()
    assert facts["driver_version"] == "550.54" and facts["cuda_driver_version"] == "12.4"
    assert facts["gpus"] == [{"index": 0, "name": "Tesla T4", "uuid": "abcd", "memory_total": 16 * GiB,
                              "memory_free": 15 * GiB, "capability": "7.5"}]
    assert dv.nvidia_driver_facts()["source"] == "nvml"


def test_nvml_that_cannot_start_means_none(monkeypatch):
    fake = types.ModuleType("pynvml")

    def fail():
        raise RuntimeError("NVML Shared Library Not Found")

    fake.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert dv.nvml_facts() is None


def test_nvidia_smi_output_is_parsed(monkeypatch):
    monkeypatch.setattr(nvidia.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    out = "0, NVIDIA GeForce RTX 3090, GPU-1234, 24576, 20000, 535.104\n"
    monkeypatch.setattr(nvidia.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=out, stderr=""))
    facts = dv.nvidia_smi_facts()
    assert facts["driver_version"] == "535.104"
    g = facts["gpus"][0]
    assert g["name"] == "NVIDIA GeForce RTX 3090" and g["uuid"] == "1234"
    assert g["memory_total"] == 24576 * 1024**2 and g["memory_free"] == 20000 * 1024**2


def test_nvidia_smi_timeout_means_none(monkeypatch):
    monkeypatch.setattr(nvidia.shutil, "which", lambda name: "/usr/bin/nvidia-smi")

    def hang(*a, **k):
        raise subprocess.TimeoutExpired("nvidia-smi", k.get("timeout"))

    monkeypatch.setattr(nvidia.subprocess, "run", hang)
    assert dv.nvidia_smi_facts() is None


# ------------------------------------------------------------------ core.env


def test_prepare_environment_sets_mps_fallback_only_on_apple_silicon(monkeypatch):
    monkeypatch.delenv("PYTORCH_ENABLE_MPS_FALLBACK", raising=False)
    monkeypatch.setattr(env.platform, "system", lambda: "Linux")
    monkeypatch.setattr(env.platform, "machine", lambda: "x86_64")
    env.prepare_environment()
    assert "PYTORCH_ENABLE_MPS_FALLBACK" not in os.environ
    monkeypatch.setattr(env.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(env.platform, "machine", lambda: "arm64")
    env.prepare_environment()
    assert os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] == "1"


def test_prepare_environment_never_overrides_the_user(monkeypatch):
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "0")
    monkeypatch.setattr(env.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(env.platform, "machine", lambda: "arm64")
    env.prepare_environment()
    assert os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] == "0"


def test_env_module_does_not_import_torch():
    code = "import sys, wwts.core.env; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("device, task, expected", [
    ("cpu", "classify", 8), ("cpu", "caption", 8), ("cuda", "classify", 64), ("cuda", "caption", 32),
    ("mps", "classify", 32), ("mps", "caption", 8), ("xpu", "classify", 32),
])
def test_default_batch_size_per_device_and_task(device, task, expected):
    assert dv.default_batch_size(torch.device(device), task) == expected


def test_engine_uses_the_device_batch_size_unless_given(tiny_clip, sample_images):
    from wwts.core import engine
    from wwts.core.config import RunConfig

    base = dict(task="classify", inputs=(sample_images,), labels=("人", "车"), model=str(tiny_clip), device="cpu")
    assert engine.start(RunConfig(**base)).batch_size == dv.default_batch_size(torch.device("cpu"), "classify")
    assert engine.start(RunConfig(**base, batch_size=3)).batch_size == 3
