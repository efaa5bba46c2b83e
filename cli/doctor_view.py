"""``wwts doctor``: render ``core.doctor.collect()``'s facts as rich tables, or as one JSON object.

torch is not imported here at module import time (``core.doctor`` imports it inside ``collect``),
so importing the CLI stays instant.
"""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text


def _size(n: Any) -> str:
    """Bytes as ``"1.5 GiB"`` / ``"512 MiB"``; ``"?"`` when unknown."""
    if not isinstance(n, (int, float)):
        return "?"
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    return f"{n / 1024**2:.0f} MiB"


def _yes_no(value: Any) -> Text:
    if value is None:
        return Text("?", style="dim")
    return Text("yes", style="green") if value else Text("no", style="red")


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  show_header=False, pad_edge=False, expand=False)
    table.add_column("key", style="cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value if isinstance(value, Text) else Text("-" if value is None else str(value)))
    return table


def _system_table(system: dict) -> Table:
    if system.get("error"):
        return _kv_table("System", [("error", Text(system["error"], style="red"))])
    t = system.get("torch") or {}
    if t.get("error"):
        torch_text = Text(f"{t.get('version') or 'not importable'}: {t['error']}", style="red")
    else:
        parts = [t.get("build") or "?"]
        if t.get("cudnn"):
            parts.append(f"cuDNN {t['cudnn']}")
        if t.get("cpu_capability"):
            parts.append(f"CPU kernels {t['cpu_capability']}")
        torch_text = Text(f"{t.get('version')} ({', '.join(parts)})")
    return _kv_table("System", [
        ("OS", system.get("os")),
        ("Python", f"{system.get('python')}  {system.get('executable')}"),
        ("wwts", system.get("wwts")),
        ("torch", torch_text),
        ("transformers", system.get("transformers")),
        ("huggingface_hub", system.get("huggingface_hub")),
        ("Pillow", system.get("pillow")),
        ("pillow-heif", system.get("pillow_heif") or Text("not installed", style="yellow")),
    ])


def _cpu_table(cpu: dict) -> Table:
    if cpu.get("error"):
        return _kv_table("CPU", [("error", Text(cpu["error"], style="red"))])
    features = cpu.get("features") or {}
    has = [name for name, present in features.items() if present]
    lacks = [name for name, present in features.items() if not present]
    isa = Text()
    if has:
        isa.append("has ").append(", ".join(has), style="green")
    if lacks:
        isa.append("; " if has else "").append("lacks ").append(", ".join(lacks), style="yellow")
    cores = (f"{cpu.get('physical_cores')} physical, {cpu.get('logical_cores')} logical, "
             f"{cpu.get('usable_cpus')} usable by this process")
    return _kv_table("CPU", [
        ("model", f"{cpu.get('model') or '?'} ({cpu.get('arch')})"),
        ("cores", cores),
        ("instruction sets", isa if isa.plain else Text("unknown", style="dim")),
        ("RAM", f"{_size(cpu.get('ram_available'))} available of {_size(cpu.get('ram_total'))}"),
    ])


def _gpu_renderables(acc: dict) -> list:
    if acc.get("error"):
        return [_kv_table("Accelerators", [("error", Text(acc["error"], style="red"))])]
    out: list = []
    gpus = acc.get("gpus") or []
    driver = acc.get("nvidia_driver") or {}
    cuda = acc.get("cuda") or {}
    title = "CUDA GPUs"
    if driver.get("driver_version"):
        title += f"  (driver {driver['driver_version']}"
        title += f", CUDA up to {driver['cuda_driver_version']})" if driver.get("cuda_driver_version") else ")"
    if gpus:
        table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)
        for col in ("#", "name", "capability", "memory free / total", "bf16", "usable by torch"):
            table.add_column(col, no_wrap=col != "name")
        for g in gpus:
            usable = _yes_no(g.get("torch_visible"))
            if g.get("arch_supported") is False:
                usable = Text("no (arch not in this build)", style="red")
            if g.get("error"):
                usable = Text(g["error"], style="red")
            table.add_row(str(g.get("device") or g.get("index")), Text(str(g.get("name") or "?")),
                          str(g.get("capability") or "?"),
                          f"{_size(g.get('memory_free'))} / {_size(g.get('memory_total'))}",
                          _yes_no(g.get("bf16")), usable)
        out.append(table)
    else:
        line = Text("CUDA GPUs: none seen", style="bold")
        if cuda.get("error"):
            line.append(f"  (CUDA error: {cuda['error']})", style="red")
        out.append(line)
    mps, xpu = acc.get("mps") or {}, acc.get("xpu") or {}
    other = Text("Apple MPS: ", style="bold")
    other.append(f"built {'yes' if mps.get('built') else 'no'}, available {'yes' if mps.get('available') else 'no'}")
    other.append("    Intel XPU: ", style="bold")
    names = ", ".join(str(d.get("name")) for d in xpu.get("devices") or [])
    other.append(("yes" + (f" ({names})" if names else "")) if xpu.get("available") else "no")
    out.append(other)
    return out


def _runtime_line(runtimes: dict) -> Text:
    line = Text("Optional runtimes (report only): ", style="bold")
    if runtimes.get("error"):
        return line.append(runtimes["error"], style="red")
    parts = []
    ort = runtimes.get("onnxruntime")
    if ort:
        parts.append(f"ONNX Runtime {ort.get('version')} [{', '.join(ort.get('providers') or [])}]"
                     + (f" {ort['error']}" if ort.get("error") else ""))
    ov = runtimes.get("openvino")
    if ov:
        parts.append(f"OpenVINO {ov.get('version')} [{', '.join(ov.get('devices') or [])}]"
                     + (f" {ov['error']}" if ov.get("error") else ""))
    return line.append("; ".join(parts) if parts else "none installed", style="" if parts else "dim")


def _backend_renderables(b: dict) -> list:
    """Backends: OpenVINO's devices (name, capabilities), ONNX Runtime's providers, what
    ``--backend auto`` picks and why, the saved conversions."""
    if b.get("error"):
        return [_kv_table("Backends", [("error", Text(b["error"], style="red"))])]
    rows: list[tuple[str, Any]] = []
    ov, ort = b.get("openvino") or {}, b.get("onnxruntime") or {}
    if not ov.get("installed"):
        rows.append(("OpenVINO", Text(f"not installed ({ov.get('install')})", style="dim")))
    elif ov.get("error"):
        rows.append(("OpenVINO", Text(ov["error"], style="red")))
    else:
        rows.append(("OpenVINO", ov.get("version")))
        for d in ov.get("devices") or []:
            caps = d.get("capabilities")
            caps = ", ".join(caps) if isinstance(caps, list) else str(caps)
            rows.append((f"  {d.get('name')}", f"{d.get('full_name')} [{caps}]"))
    if not ort.get("installed"):
        rows.append(("ONNX Runtime", Text(f"not installed ({ort.get('install')})", style="dim")))
    else:
        rows.append(("ONNX Runtime", ort.get("error") or f"{ort.get('version')} [{', '.join(ort.get('providers') or [])}]"))
    for key, label in (("classify", "auto, by device"), ("classify_int8", "auto, --quantize int8")):
        a = (b.get("auto") or {}).get(key) or {}
        rows.append((label, f"{a.get('backend') or '-'}: {a.get('reason')}"))
    for size, a in ((b.get("auto") or {}).get("sized") or {}).items():
        pick = a.get("error") or f"{a.get('backend')}{' int8' if a.get('int8') else ''}: {a.get('reason')}"
        rows.append((f"auto, {int(size):,} photos", pick))
    conv = b.get("conversions") or {}
    rows.append(("conversions", f"{conv.get('count', 0)} saved, {_size(conv.get('bytes'))} (+ "
                                f"{_size(conv.get('compiled_bytes'))} compiled) in {conv.get('folder')}; "
                                f"{conv.get('bundles', 0)} model(s) start without torch"))
    for c in (conv.get("items") or [])[:8]:
        rows.append(("", f"{c.get('backend')} {c.get('tower')} {c.get('precision')}: {c.get('model')}"))
    return [_kv_table("Backends (--backend)", rows)]


def _plan_renderables(plan: dict) -> list:
    if plan.get("error"):
        return [_kv_table("What wwts would do here", [("error", Text(plan["error"], style="red"))])]
    table = Table(title="What wwts would do here", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)
    for col in ("task", "device", "dtype", "threads", "batch", "decode workers"):
        table.add_column(col, no_wrap=True)
    for task in ("classify", "caption"):
        t = plan.get(task) or {}
        table.add_row(task, str(plan.get("device")), str(plan.get("dtype")), str(plan.get("threads")),
                      str(t.get("batch_size")), str(t.get("decode_workers")))
    why = Text()
    why.append("device: ", style="cyan").append(f"{plan.get('device_reason')}\n")
    why.append("dtype: ", style="cyan").append(f"{plan.get('dtype_reason')}\n")
    cal = plan.get("calibration")
    if cal:
        why.append("bf16 calibration: ", style="cyan").append(
            f"{cal.get('workload')}: float32 {cal.get('float32_s', 0) * 1000:.0f} ms, bf16 "
            f"{cal.get('bfloat16_s', 0) * 1000:.0f} ms ({cal.get('speedup')}x), measured {cal.get('measured')}; "
            "wwts doctor --recalibrate measures again\n")
    why.append("threads: ", style="cyan").append(str(plan.get("threads_source")))
    for dev, reason in plan.get("tried") or []:
        why.append(f"\nskipped {dev}: ", style="yellow").append(str(reason))
    return [table, why]


def _model_renderables(models: dict) -> list:
    if models.get("error"):
        return [_kv_table("Model cache", [("error", Text(models["error"], style="red"))])]
    table = Table(title=f"Model cache  {models.get('cache_dir')}", title_justify="left", title_style="bold",
                  box=box.SIMPLE_HEAD)
    for col in ("default for", "model", "cached", "size"):
        table.add_column(col, no_wrap=col != "model")
    for d in models.get("defaults") or []:
        table.add_row(d.get("key"), Text(str(d.get("name"))), _yes_no(d.get("cached")),
                      _size(d.get("size_bytes")) if d.get("cached") else "-")
    hub = models.get("hub") or {}
    line = Text("Hub: ", style="bold").append(f"{hub.get('endpoint')} ")
    if hub.get("offline"):
        line.append("offline mode (HF_HUB_OFFLINE), not contacted", style="yellow")
    elif not hub.get("checked"):
        line.append("not checked", style="dim")
    elif hub.get("reachable"):
        line.append(f"reachable ({hub.get('detail')}, {hub.get('seconds')} s)", style="green")
    else:
        line.append(f"unreachable ({hub.get('detail')})", style="red")
    return [table, line, _modelscope_line(models.get("modelscope") or {})]


def _modelscope_line(ms: dict) -> Text:
    """``ModelScope: ENDPOINT reachable / unreachable / offline``, and whether the library is installed."""
    line = Text("ModelScope: ", style="bold").append(f"{ms.get('endpoint')} ")
    if ms.get("reachable"):
        line.append(f"reachable ({ms.get('detail')}, {ms.get('seconds')} s)", style="green")
    elif ms.get("checked"):
        line.append(f"unreachable ({ms.get('detail')})", style="red")
    else:
        line.append(str(ms.get("detail")), style="yellow" if "offline" in str(ms.get("detail")) else "dim")
    if ms.get("installed"):
        return line.append(f"; modelscope {ms.get('version')}, cache {ms.get('cache_dir')}")
    return line.append("; modelscope not installed (pip install 'wwts[modelscope]')", style="dim")


def _warnings_renderable(warnings: list[str]) -> Panel:
    if not warnings:
        return Panel(Text("no problems found", style="green"), title="Warnings", title_align="left",
                     border_style="green")
    body = Text()
    for i, w in enumerate(warnings):
        body.append("! ", style="bold yellow").append(w)
        if i < len(warnings) - 1:
            body.append("\n")
    return Panel(body, title="Warnings", title_align="left", border_style="yellow")


def render(facts: dict, console: Console) -> None:
    """Print ``facts`` (``core.doctor.collect()``'s dict) on ``console`` as one screen of tables."""
    parts: list = [_system_table(facts.get("system") or {}), _cpu_table(facts.get("cpu") or {})]
    parts += _gpu_renderables(facts.get("accelerators") or {})
    parts += _backend_renderables(facts.get("backends") or {}) if facts.get("backends") else \
        [_runtime_line(facts.get("runtimes") or {})]
    parts.append(Text())
    parts += _plan_renderables(facts.get("plan") or {})
    parts.append(Text())
    parts += _model_renderables(facts.get("models") or {})
    parts.append(_warnings_renderable(list(facts.get("warnings") or [])))
    console.print(Group(*parts))


def doctor_command(as_json: bool, console: Console, *, recalibrate: bool = False) -> None:
    """Run ``wwts doctor``: collect the facts and print them on ``console``.

    Args:
        as_json: print one JSON object (``json.dumps(ensure_ascii=False, indent=2)``) instead of
            tables: colourised when ``console`` is a terminal, else written as plain text to
            ``console.file`` so that it can be piped to ``jq``.
        console: where to print (the CLI's stdout console).
        recalibrate: measure the CPU's bf16 speed again instead of using the cached value.

    Never raises for a machine problem (``collect()`` turns each into a fact or a warning), so
    the command exits 0 on any machine.
    """
    from ..core.doctor import collect

    facts = collect(recalibrate=recalibrate)
    if as_json:
        text = json.dumps(facts, ensure_ascii=False, indent=2)
        if console.is_terminal:
            console.print_json(text)
        else:
            console.file.write(text + "\n")
            console.file.flush()
        return
    render(facts, console)
