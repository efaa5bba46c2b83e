"""Device faults during a run, simulated around a real tiny model running on the CPU.

The engine is told its task lives on ``cuda:0`` (or ``mps``) and the model call is wrapped so it
raises the real exception types (``torch.cuda.OutOfMemoryError``, ``NotImplementedError``, a CUDA
``RuntimeError``) while the task is on that device; the copy of inputs to the device is skipped
because this machine has no GPU. The wrapped call still runs the real model. The runs pin
``--backend torch``: the devices and their exceptions simulated here are torch's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wwts.core import engine
from wwts.core.engine import batch as engine_batch
from wwts.core.config import RunConfig
from wwts.core.hardware import DeviceChoice
from wwts.core.errors import DeviceFault


def _simulated_run(tiny_clip, sample_images, monkeypatch, *, device: str, auto: bool, fail):
    """A run whose task claims ``device``; ``fail(batch_size)`` returns an exception or None."""
    config = RunConfig(task="classify", inputs=(sample_images,), labels=("人", "车", "猫"),
                       model=str(tiny_clip), device="cpu", batch_size=8, dtype="float32", backend="torch")
    run = engine.start(config)
    task = run.task
    fake = torch.device(device)
    task.device = fake
    run.device_choice = DeviceChoice(fake, auto, [])
    calls: list[tuple[str, int]] = []
    real_forward = task.forward

    def forward(inputs):
        n = inputs["pixel_values"].shape[0]
        calls.append((task.device.type, n))
        if task.device.type != "cpu":
            exc = fail(n)
            if exc is not None:
                raise exc
        return real_forward(inputs)

    monkeypatch.setattr(task, "forward", forward)
    monkeypatch.setattr(engine_batch, "to_device", lambda inputs, device: inputs)
    return run, calls


def _reference(tiny_clip, sample_images):
    config = RunConfig(task="classify", inputs=(sample_images,), labels=("人", "车", "猫"),
                       model=str(tiny_clip), device="cpu", batch_size=8, dtype="float32", backend="torch")
    return list(engine.start(config))


def test_oom_halves_the_batch_and_keeps_every_record(tiny_clip, sample_images, monkeypatch):
    run, calls = _simulated_run(tiny_clip, sample_images, monkeypatch, device="cuda:0", auto=True,
                                fail=lambda n: torch.cuda.OutOfMemoryError("CUDA out of memory") if n > 2 else None)
    records = list(run)
    ref = _reference(tiny_clip, sample_images)
    assert [r.path for r in records] == [r.path for r in ref]
    assert all(r.error is None for r in records)
    assert [r.label for r in records] == [r.label for r in ref]
    assert [n for _, n in calls[:3]] == [8, 4, 2]
    assert run.stats.batch_size == 2 and run.info()["batch_size"] == 2
    assert str(run.device) == "cuda:0"
    assert any("out of memory" in e for e in run.stats.events)


def test_oom_at_batch_one_moves_an_auto_device_run_to_cpu(tiny_clip, sample_images, monkeypatch):
    run, calls = _simulated_run(tiny_clip, sample_images, monkeypatch, device="cuda:0", auto=True,
                                fail=lambda n: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    records = list(run)
    assert len(records) == run.total and all(r.label for r in records)
    assert [r.path for r in records] == [str(p) for p in run.paths]
    assert [n for d, n in calls if d == "cuda"] == [8, 4, 2, 1]
    assert run.device.type == "cpu" and run.stats.device == "cuda:0→cpu"
    assert "cpu" in run.info()["device"]


def test_oom_at_batch_one_on_an_explicit_device_fails_loudly(tiny_clip, sample_images, monkeypatch):
    run, _ = _simulated_run(tiny_clip, sample_images, monkeypatch, device="cuda:0", auto=False,
                            fail=lambda n: torch.cuda.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(DeviceFault, match="even at batch size 1"):
        list(run)


def test_mps_missing_op_sends_the_rest_of_the_run_to_cpu(tiny_clip, sample_images, monkeypatch):
    run, calls = _simulated_run(tiny_clip, sample_images, monkeypatch, device="mps", auto=True,
                                fail=lambda n: NotImplementedError("The operator 'aten::foo' is not "
                                                                   "currently implemented for the MPS device"))
    records = list(run)
    assert len(records) == run.total and all(r.error is None for r in records)
    assert calls[0] == ("mps", 8) and all(d == "cpu" for d, _ in calls[1:])
    assert sum(1 for e in run.stats.events if "MPS" in e) == 1


def test_device_side_assert_keeps_finished_records_then_faults(tiny_clip, sample_images, monkeypatch):
    state = {"batches": 0}

    def fail(n):
        state["batches"] += 1
        if state["batches"] == 2:
            return RuntimeError("CUDA error: device-side assert triggered")
        return None

    run, _ = _simulated_run(tiny_clip, sample_images, monkeypatch, device="cuda:0", auto=True, fail=fail)
    got = []
    with pytest.raises(DeviceFault, match="device-side assert"):
        for batch in run.batches():
            got.extend(batch)
    assert len(got) == 8 and all(r.label for r in got)  # the first batch was delivered


def test_an_error_on_one_image_is_that_image_only(tiny_clip, sample_images, monkeypatch):
    """A non-device failure in a batch is retried image by image: one error record, the rest fine."""
    config = RunConfig(task="classify", inputs=(sample_images,), labels=("人", "车", "猫"),
                       model=str(tiny_clip), device="cpu", batch_size=4, dtype="float32")
    run = engine.start(config)
    task = run.task
    real_forward = task.forward
    poison = {"value": None}

    def forward(inputs):  # pixel_values: torch or NumPy, whatever the default backend gives
        pv = np.asarray(inputs["pixel_values"])
        if poison["value"] is None:
            poison["value"] = pv[1].copy()  # the second image of the first batch
        if any(np.array_equal(x, poison["value"]) for x in pv):
            raise ValueError("weird pixels")
        return real_forward(inputs)

    monkeypatch.setattr(task, "forward", forward)
    records = list(run)
    errors = [r for r in records if r.error]
    assert len(records) == run.total
    assert len(errors) == 1 and errors[0].path == str(run.paths[1])
    assert errors[0].error.startswith("inference: ValueError")
