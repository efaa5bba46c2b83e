"""The architecture's rules, checked on the source (ARCHITECTURE.md explains them).

- No module over ``MAX_MODULE_LINES`` lines; no function over ``MAX_FUNCTION_LINES`` lines of code
  (docstrings, comments and blank lines not counted).
- Imports inside the package are relative, so a reader (or a code-navigation tool) can follow them
  to the file: ``wwts.core`` lives in ``core/`` only through a setuptools mapping.
- Imports go one way: each package of ``core`` may import only the layers below it (``LAYERS``);
  nothing in ``core`` imports ``cli``; only ``cli`` imports ``core/doctor.py``.
- Code outside a package uses its public API (``__init__``), never one of its modules.
- No import circle, inside a package or across packages, imports inside functions included (a module
  importing a package that holds it, which Python has done already, is not an edge).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

#: Each part of wwts and the parts it may import. ``base``: errors, config, env, atomic (file writes), arrays (NumPy at the
#: seams) and lazy (packages whose torch modules load on first use): shared leaves.
LAYERS: dict[str, set[str]] = {
    "base": {"base"},
    "output": {"base"},
    "store": {"base"},
    "hardware": {"base"},
    "input": {"base"},
    "labels": {"base"},  # vocabularies, prompt ensembles, label hygiene: text and tensors, no model code
    "models": {"base", "hardware"},
    "backends": {"base", "hardware", "models", "store", "input"},  # input: int8 calibration decodes as a run does
    "tasks": {"base", "hardware", "models", "backends", "store", "input", "output", "labels"},
    "engine": {"base", "hardware", "models", "backends", "store", "input", "output", "tasks", "labels"},
    "doctor": {"base", "hardware", "models", "backends", "input"},
    # --ray: the engine's batch function on Ray Data; beside the engine, calling it (never called by it)
    "cluster": {"base", "hardware", "models", "backends", "store", "input", "output", "tasks", "engine", "labels"},
    # acting on results (wwts report / sort, XMP sidecars): leaves that read records, no model code
    "report": {"base", "output", "input"}, "xmp": {"base", "output"}, "sort": {"base", "output"},
    "cli": {"base", "hardware", "models", "backends", "store", "input", "output", "tasks", "engine", "doctor",
            "cli", "report", "xmp", "sort", "labels", "cluster"},
}


def sources() -> list[Path]:
    return sorted(p for d in ("core", "cli") for p in (ROOT / d).rglob("*.py"))


def module_name(path: Path) -> str:
    """``core/hardware/cpu.py`` → ``wwts.core.hardware.cpu`` (``__init__`` → the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["wwts", *parts])


def part_of(module: str) -> str:
    """Which ``LAYERS`` entry a ``wwts.*`` module belongs to."""
    parts = module.split(".")
    if parts[1] == "cli":
        return "cli"
    if len(parts) == 2:
        return "base"  # wwts.core itself: the version
    name = parts[2]
    if name in ("errors", "config", "env", "arrays", "lazy", "atomic"):
        return "base"
    return name


def _public_names(package: str) -> set[str]:
    """The ``__all__`` of a package of this project (empty when it has none)."""
    init = ROOT.joinpath(*package.split(".")[1:], "__init__.py")
    if not init.exists():
        return set()
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def _is_module(name: str) -> bool:
    """True when ``wwts.x.y`` names a module or package of this project, not a name its package
    exports (``wwts.core.input.discover`` is both a module and the function the package exports)."""
    package, _, last = name.rpartition(".")
    if last in _public_names(package):
        return False
    rel = ROOT.joinpath(*name.split(".")[1:])
    return rel.with_suffix(".py").exists() or (rel / "__init__.py").exists()


def imported_modules(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, absolute module name, written relative)`` for every ``wwts`` import in ``path``;
    ``from pkg import mod`` counts as an import of ``pkg.mod`` when ``mod`` is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, False) for a in node.names if a.name.split(".")[0] == "wwts"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "wwts":
                target = node.module
            else:
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                out.append((node.lineno, candidate if _is_module(candidate) else target, bool(node.level)))
    return out


def code_lines(node: ast.AST, lines: list[str]) -> int:
    """Lines of code in a function: its span less blank lines, comments and its docstring."""
    skip: set[int] = set()
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    count = 0
    for n in range(node.lineno, node.end_lineno + 1):
        text = lines[n - 1].strip()
        if n in skip or not text or text.startswith("#"):
            continue
        count += 1
    return count


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {n} lines (max {MAX_MODULE_LINES})"


def test_function_size():
    long = []
    for path in sources():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = code_lines(node, lines)
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines of code")
    assert not long, "functions over the limit:\n" + "\n".join(long)


def test_imports_inside_the_package_are_relative():
    absolute = [f"{p.relative_to(ROOT)}:{line} {mod}" for p in sources()
                for line, mod, relative in imported_modules(p) if not relative]
    assert not absolute, "absolute wwts imports (write them relative):\n" + "\n".join(absolute)


def test_imports_go_one_way():
    wrong = []
    for path in sources():
        me = module_name(path)
        mine = part_of(me)
        for line, mod, _ in imported_modules(path):
            if not mod.startswith("wwts.") or mod == "wwts":
                continue
            theirs = part_of(mod)
            if theirs != mine and theirs not in LAYERS[mine]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {mod} ({theirs})")
    assert not wrong, "imports against the direction of the layers:\n" + "\n".join(wrong)


def test_other_packages_use_a_package_through_its_public_api():
    reaching = []
    for path in sources():
        me = module_name(path)
        for line, mod, _ in imported_modules(path):
            parts = mod.split(".")
            if len(parts) < 4 or parts[1] != "core" or not (ROOT / "core" / parts[2]).is_dir():
                continue
            package = ".".join(parts[:3])
            if not me.startswith(package) and (ROOT / "core" / parts[2] / f"{parts[3]}.py").exists():
                reaching.append(f"{path.relative_to(ROOT)}:{line} imports {mod}: use {package}")
    assert not reaching, "imports of another package's module:\n" + "\n".join(reaching)


def import_graph() -> dict[str, set[str]]:
    """``module → the wwts modules it imports`` over ``sources()``, every import statement at any
    depth (``ast.walk`` sees the ones inside functions); a module's own enclosing packages are left out."""
    modules = {module_name(p): p for p in sources()}
    graph: dict[str, set[str]] = {}
    for me, path in modules.items():
        graph[me] = {mod for _, mod, _ in imported_modules(path)
                     if mod in modules and mod != me and not me.startswith(mod + ".")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one module, each sorted
    (Tarjan's algorithm, iterative so a deep chain cannot hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def test_no_import_circle():
    found = circles(import_graph())
    assert not found, "import circles (imports inside functions count):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_the_rules_catch_what_they_are_meant_to(tmp_path):
    """The checks above would fail on code that breaks them."""
    src = "def f():\n    '''doc\n    more'''\n" + "    x = 1\n" * 61 + "    # comment\n\n"
    node = ast.parse(src).body[0]
    assert code_lines(node, src.splitlines()) == 62  # the def line and 61 statements
    assert part_of("wwts.core.output.writers") == "output" and part_of("wwts.core.errors") == "base"
    assert "engine" not in LAYERS["tasks"] and "cli" not in LAYERS["engine"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_two_modules_share_a_name():
    """One name, one meaning: a module's file name says its job wherever it is (``__init__`` aside)."""
    seen: dict[str, list[str]] = {}
    for path in sources():
        if path.name != "__init__.py":
            seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert not {name: paths for name, paths in seen.items() if len(paths) > 1}
