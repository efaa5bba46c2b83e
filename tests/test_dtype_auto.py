"""``--dtype auto`` end to end on simulated CPUs: the suite's outcome never depends on the real one.

The calibration's timing (``core.hardware.calibration.time_block``) and the CPU's flags are
simulated, so these tests give the same result on an Intel VM, an AMD EPYC or an Arm laptop. The
calibration decides torch's CPU dtype, so the runs pin the torch backend (``--backend auto`` picks
OpenVINO on an x86 CPU without AMX, where the calibration is not asked).
"""

from __future__ import annotations

import json
import platform

import pytest

from tests.helpers import classify

pytestmark = pytest.mark.skipif(platform.machine().lower() in ("arm64", "aarch64"), reason="x86 flag names")


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("WWTS_BACKEND", "torch")


def _simulate(monkeypatch, flags: set[str], float32_s: float, bfloat16_s: float) -> list[int]:
    from wwts.core.hardware import calibration
    from wwts.core.hardware import cpu

    calls: list[int] = []
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(calibration, "time_block",
                        lambda b, rounds=3: calls.append(b) or {"float32": float32_s, "bfloat16": bfloat16_s})
    return calls


@pytest.mark.parametrize("cpu, flags, times, expected", [
    ("zen4", {"avx2", "avx512f", "avx512_bf16"}, (0.16, 0.10), "bfloat16"),      # measured 1.6x: bf16
    ("intel-vm", {"avx2", "avx512f", "avx512_bf16"}, (0.073, 0.10), "float32"),  # measured 0.73x: float32
    ("no-bf16", {"avx2", "avx512f"}, (0.1, 0.1), "float32"),                     # never measured
])
def test_auto_dtype_of_a_classify_run_follows_the_simulated_cpu(monkeypatch, tiny_clip, sample_images, tmp_path,
                                                                cpu, flags, times, expected):
    calls = _simulate(monkeypatch, flags, *times)
    out = tmp_path / "r.json"
    result = classify(sample_images / "chelsea.png", sample_images / "coffee.jpg", "--labels", "猫,咖啡",
                      "--model", tiny_clip, "--out", out, "--device", "cpu", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["run"]["dtype"] == expected
    assert calls == ([] if cpu == "no-bf16" else [2])  # measured at the run's batch size
    assert all(r["error"] is None and r["label"] for r in doc["results"])


def test_calibration_is_measured_once_per_machine_not_once_per_run(monkeypatch, tiny_clip, sample_images, tmp_path):
    calls = _simulate(monkeypatch, {"avx512f", "avx512_bf16"}, 0.16, 0.10)
    for i in range(2):
        result = classify(sample_images / "chelsea.png", "--labels", "猫,狗", "--model", tiny_clip,
                          "--out", tmp_path / f"r{i}.jsonl")
        assert result.exit_code == 0, result.output
    assert calls == [8]
