"""``wwts doctor``: core.doctor.collect() facts and cli.doctor rendering, offline, no GPU needed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import types
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from wwts.cli.doctor_view import doctor_command, render
from wwts.cli.app import app
from wwts.core.hardware import cpu, nvidia
from wwts.core.hardware import device as sel
from wwts.core import doctor, models
from wwts.core.models import hub

GiB = 1024**3
TOP_KEYS = {"schema", "system", "cpu", "accelerators", "runtimes", "plan", "models", "warnings"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


TORCH_ARCHS = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")


def fake_gpus(monkeypatch, gpus, arch_list=TORCH_ARCHS):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))

    def props(i):
        g = gpus[i]
        return SimpleNamespace(name=g["name"], major=g["cap"][0], minor=g["cap"][1], total_memory=g["total"],
                               multi_processor_count=132, uuid=f"uuid-{i}")

    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: props(i).name)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (gpus[i]["free"], gpus[i]["total"]))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    monkeypatch.setattr(nvidia, "nvml_facts", lambda: None)
    monkeypatch.setattr(nvidia, "nvidia_smi_facts", lambda timeout=3.0: None)
    monkeypatch.setattr(sel, "probe", lambda device: None)


def fake_pynvml(monkeypatch, name="NVIDIA GeForce RTX 4090"):
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = fake.nvmlShutdown = lambda: None
    fake.nvmlSystemGetDriverVersion = lambda: "550.54"
    fake.nvmlSystemGetCudaDriverVersion = lambda: 12040
    fake.nvmlDeviceGetCount = lambda: 1
    fake.nvmlDeviceGetHandleByIndex = lambda i: object()
    fake.nvmlDeviceGetName = lambda h: name
    fake.nvmlDeviceGetUUID = lambda h: "GPU-0000"
    fake.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(total=24 * GiB, free=23 * GiB)
    fake.nvmlDeviceGetCudaComputeCapability = lambda h: (8, 9)
    monkeypatch.setitem(sys.modules, "pynvml", fake)


def render_text(facts) -> str:
    console = Console(file=io.StringIO(), width=140, force_terminal=False)
    render(facts, console)
    return console.file.getvalue()


def test_collect_on_this_machine():
    start = time.monotonic()
    facts = doctor.collect()
    assert time.monotonic() - start < 15
    assert TOP_KEYS <= set(facts)
    json.loads(json.dumps(facts, ensure_ascii=False))  # JSON-serialisable as is
    assert facts["system"]["torch"]["version"] == torch.__version__
    assert facts["system"]["python"].endswith(sys.version.split()[0])
    cpu = facts["cpu"]
    assert cpu["logical_cores"] >= cpu["physical_cores"] >= 1 and 1 <= cpu["usable_cpus"] <= cpu["logical_cores"]
    assert cpu["ram_total"] >= cpu["ram_available"] > 0
    assert isinstance(cpu["features"], dict) and cpu["features"]
    for section in ("system", "cpu", "accelerators", "runtimes", "plan", "models"):
        assert "error" not in facts[section] or facts[section]["error"] is None, facts[section]
    plan = facts["plan"]
    assert plan["device"] in ("cpu", "cuda:0", "mps", "xpu")
    for task in ("classify", "caption"):
        assert plan[task]["batch_size"] >= 1 and plan[task]["decode_workers"] >= 1
        assert plan[task]["summary"].startswith(f"{task} on ")
    hub = facts["models"]["hub"]
    assert hub["offline"] is True and hub["checked"] is False and hub["seconds"] == 0.0
    assert {d["key"] for d in facts["models"]["defaults"]} >= {"classify", "caption"}
    assert all(isinstance(w, str) for w in facts["warnings"])


def _cpu_only(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)


def test_cpu_plan_gives_no_constant_speed_estimate(monkeypatch):
    _cpu_only(monkeypatch)
    facts = doctor.collect(check_hub=False)
    assert facts["plan"]["device"] == "cpu"
    assert "images_per_s_estimate" not in facts["plan"]["classify"]
    assert not any("expect about" in w for w in facts["warnings"])
    assert "images/s" not in facts["plan"]["classify"]["summary"]


def test_doctor_says_when_the_bf16_calibration_was_measured_and_recalibrates(monkeypatch):
    from wwts.core.hardware import calibration

    _cpu_only(monkeypatch)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    calls = []
    monkeypatch.setattr(calibration, "time_block",
                        lambda b, rounds=3: calls.append(b) or {"float32": 0.16, "bfloat16": 0.10})
    plan = doctor.collect(check_hub=False)["plan"]
    cal = plan["calibration"]
    assert plan["dtype"] == "bfloat16" and cal["speedup"] == pytest.approx(1.6)
    assert cal["measured"][:10] in plan["dtype_reason"] and "1.60x" in plan["dtype_reason"]
    assert doctor.collect(check_hub=False)["plan"]["calibration"]["measured"] == cal["measured"]
    assert len(calls) == 1  # cached
    monkeypatch.setattr(calibration, "time_block", lambda b, rounds=3: calls.append(b) or {"float32": 0.07, "bfloat16": 0.10})
    result = CliRunner().invoke(app, ["doctor", "--recalibrate"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert len(calls) == 2 and "bf16 calibration" in result.output and "0.7x" in result.output
    assert doctor.collect(check_hub=False)["plan"]["dtype"] == "float32"  # the new measurement rules


def test_simulated_gpus_appear_as_rows_and_in_the_plan(monkeypatch):
    fake_gpus(monkeypatch, [
        {"name": "NVIDIA A100-SXM4-80GB", "cap": (8, 0), "total": 80 * GiB, "free": 10 * GiB},
        {"name": "Tesla T4", "cap": (7, 5), "total": 16 * GiB, "free": 15 * GiB},
    ])
    facts = doctor.collect()
    rows = facts["accelerators"]["gpus"]
    assert [r["name"] for r in rows] == ["NVIDIA A100-SXM4-80GB", "Tesla T4"]
    assert rows[0]["capability"] == "8.0" and rows[0]["memory_total"] == 80 * GiB
    assert rows[0]["memory_free"] == 10 * GiB and rows[0]["bf16"] is True
    assert rows[1]["capability"] == "7.5" and rows[1]["bf16"] is False
    assert all(r["torch_visible"] and r["arch_supported"] for r in rows)
    assert facts["accelerators"]["cuda"] == {"available": True, "build": "CUDA 12.4", "device_count": 2,
                                             "error": None}
    plan = facts["plan"]
    assert plan["device"] == "cuda:1"  # the most free memory
    assert plan["dtype"] == "float16"  # T4: no native bf16
    assert "images_per_s_estimate" not in plan["classify"] and plan["calibration"] is None
    assert not any(w.startswith("CPU mode") for w in facts["warnings"])
    json.dumps(facts)
    text = render_text(facts)
    assert "NVIDIA A100-SXM4-80GB" in text and "Tesla T4" in text
    assert "10.0 GiB / 80.0 GiB" in text and "7.5" in text


def test_gpu_arch_missing_from_the_torch_build_is_warned(monkeypatch):
    fake_gpus(monkeypatch, [{"name": "NVIDIA RTX PRO 6000", "cap": (12, 0), "total": 96 * GiB,
                             "free": 90 * GiB}], arch_list=("sm_80", "sm_90"))
    facts = doctor.collect()
    assert facts["accelerators"]["gpus"][0]["arch_supported"] is False
    assert any("not supported by this torch build" in w and "sm_90" in w for w in facts["warnings"])


def test_cpu_only_build_with_an_nvidia_gpu_present_warns(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    fake_pynvml(monkeypatch)
    facts = doctor.collect()
    assert facts["accelerators"]["nvidia_driver"]["source"] == "nvml"
    row = facts["accelerators"]["gpus"][0]
    assert row["name"] == "NVIDIA GeForce RTX 4090" and row["torch_visible"] is False
    assert row["capability"] == "8.9" and row["memory_total"] == 24 * GiB
    warning = [w for w in facts["warnings"] if "CPU-only build" in w]
    assert warning and "NVIDIA GeForce RTX 4090" in warning[0] and "12.4" in warning[0]
    assert "pip install" in warning[0]
    assert "NVIDIA GeForce RTX 4090" in render_text(facts)


def test_cuda_build_that_sees_no_gpu_the_driver_lists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    fake_pynvml(monkeypatch)
    facts = doctor.collect()
    assert any("torch (CUDA 12.8) sees none" in w for w in facts["warnings"])
    # CUDA minor-version compatibility: a 12.8 runtime runs on a 12.4 driver
    assert not any("needs CUDA" in w for w in facts["warnings"])
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    facts = doctor.collect()
    assert any("needs CUDA 13.0 but the driver supports up to 12.4" in w for w in facts["warnings"])


def test_broken_cuda_still_gives_facts(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("CUDA driver initialization failed, you might not have a CUDA gpu.")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    monkeypatch.setattr(torch.cuda, "device_count", broken)
    facts = doctor.collect()
    assert TOP_KEYS <= set(facts)
    assert facts["accelerators"]["cuda"]["error"].startswith("RuntimeError: CUDA driver initialization failed")
    assert facts["plan"]["device"] == "cpu"
    assert facts["plan"]["tried"] == [["cuda", facts["accelerators"]["cuda"]["error"]]]
    assert any(w.startswith("CUDA fails here") for w in facts["warnings"])
    json.dumps(facts)
    assert "CUDA error" in render_text(facts)


def test_a_failing_section_is_reported_not_raised(monkeypatch):
    def boom():
        raise OSError("psutil exploded")

    monkeypatch.setattr(doctor, "cpu_facts", boom)
    facts = doctor.collect()
    assert facts["cpu"] == {"error": "OSError: psutil exploded"}
    assert "could not collect cpu facts: OSError: psutil exploded" in facts["warnings"]
    assert "psutil exploded" in render_text(facts)


def test_hub_check_is_skipped_when_offline(monkeypatch):
    def must_not_run(*a, **k):
        raise AssertionError("the hub was contacted in offline mode")

    monkeypatch.setattr(hub, "_head", must_not_run)
    start = time.monotonic()
    status = models.hub_status()
    assert time.monotonic() - start < 0.1
    assert status["offline"] is True and status["checked"] is False and status["reachable"] is None


def test_hub_check_gives_up_after_its_timeout(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    seen = {}

    def hang(url, timeout):
        seen["url"], seen["timeout"] = url, timeout
        time.sleep(5)
        return True, "HTTP 200"

    monkeypatch.setattr(hub, "_head", hang)
    start = time.monotonic()
    status = models.hub_status(timeout=0.2)
    assert time.monotonic() - start < 1.5
    assert status["reachable"] is False and status["checked"] is True and "0.2 s" in status["detail"]
    assert seen == {"url": "https://hf-mirror.example", "timeout": 0.2}
    assert models.HUB_TIMEOUT_S <= 2.5


@pytest.fixture
def local_hub(monkeypatch):
    """A real HTTP server on 127.0.0.1 standing in for the hub: answers every HEAD request with the
    status in ``state["status"]``; ``HF_ENDPOINT`` points at it, offline mode and proxies are off."""
    import http.server
    import threading

    state = {"status": 200, "requests": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            state["requests"].append((self.command, self.path, self.headers.get("User-Agent", "")))
            self.send_response(state["status"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY",
                 "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", state["url"] + "/")
    yield state
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [200, 404, 503])
def test_hub_check_counts_any_http_answer_as_reachable(local_hub, status):
    local_hub["status"] = status
    got = models.hub_status(timeout=2)
    assert got["reachable"] is True and got["checked"] is True and got["offline"] is False
    assert got["detail"] == f"HTTP {status}" and got["endpoint"] == local_hub["url"]
    assert len(local_hub["requests"]) == 1
    method, path, agent = local_hub["requests"][0]
    assert method == "HEAD" and path == "/" and agent.startswith("wwts/")


def test_hub_check_reports_a_refused_connection_as_unreachable(local_hub, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    got = models.hub_status(timeout=2)
    assert got["reachable"] is False and got["checked"] is True
    assert "refused" in got["detail"].lower() and "no answer within" not in got["detail"]


def test_unreachable_hub_with_uncached_models_suggests_a_mirror(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_head", lambda url, timeout: (False, "Name or service not known"))
    facts = doctor.collect(cache_dir=str(tmp_path))
    assert any("cannot be reached" in w and "HF_ENDPOINT=https://hf-mirror.com" in w for w in facts["warnings"])


def test_unreachable_mirror_already_set_is_not_suggested_again(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.com")
    monkeypatch.setattr(hub, "_head", lambda url, timeout: (False, "Name or service not known"))
    facts = doctor.collect(cache_dir=str(tmp_path))
    warning = next(w for w in facts["warnings"] if "cannot be reached" in w)
    assert "export HF_ENDPOINT" not in warning and "unset HF_ENDPOINT" in warning


def _fake_cached_model(root, repo_id, files):
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, size in files.items():
        (snap / name).write_bytes(b"x" * size)


def test_model_cache_detection(tmp_path):
    from wwts.core.models import DEFAULT_MODELS

    classify, caption = DEFAULT_MODELS["classify"].name, DEFAULT_MODELS["caption"].name
    _fake_cached_model(tmp_path, classify, {"config.json": 10, "model.safetensors": 1000})
    _fake_cached_model(tmp_path, caption, {"config.json": 10})  # interrupted download: no weights
    facts = doctor.model_facts(str(tmp_path), check_hub=False)
    rows = {d["key"]: d for d in facts["defaults"]}
    assert rows["classify"]["cached"] is True and rows["classify"]["size_bytes"] == 1010
    assert rows["caption"]["cached"] is False
    assert rows["caption-zh"]["cached"] is False and rows["caption-zh"]["path"] is None
    assert facts["cache_dir"] == str(tmp_path)


def test_doctor_command_json_is_one_parseable_object():
    console = Console(file=io.StringIO(), force_terminal=False, width=80)
    doctor_command(True, console)
    facts = json.loads(console.file.getvalue())
    assert TOP_KEYS <= set(facts)


def test_doctor_command_tables():
    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    doctor_command(False, console)
    text = console.file.getvalue()
    for heading in ("System", "CPU", "CUDA GPUs", "Apple MPS", "What wwts would do here", "Model cache",
                    "Warnings", "classify", "caption", torch.__version__):
        assert heading in text


def test_cli_doctor_does_not_import_torch_at_import_time():
    code = "import sys, wwts.cli.doctor_view, wwts.core.doctor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
