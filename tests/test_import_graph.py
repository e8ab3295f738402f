"""No import cycles in ``textkd``: a static graph of every import between its modules, at module
level and inside functions alike (a lazy import inside a function only hides a cycle), must be
acyclic. Also: every module imports in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "projects" / "TextKD" / "textkd"
PACKAGE = "textkd"


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (``__init__.py`` is the
    package itself)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement of ``module`` names."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file (``import a.b``,
    ``from a import b`` with ``a.b`` a module, ``from .a import name``). An edge goes to the
    module named, not to its parent packages (importing ``a.b`` runs ``a/__init__`` first, but
    that is the usual package structure, not a cycle between the modules' own code)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = subs or [base]
                if len(subs) < len(node.names):
                    targets.append(base)
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is acyclic."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_graph_sees_module_and_function_level_imports():
    g = import_graph()
    # module level: the task loss does not know any head; the heads import it
    assert "textkd.models.losses" in g["textkd.models.ocrnet"]
    assert not g["textkd.models.losses"] & {"textkd.models.ocrnet", "textkd.models.stdc"}
    assert "textkd.models.outputs" in g["textkd.distill.terms"]
    # the checker finds a cycle, including one closed only by an import inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_function_level_imports_are_in_the_graph(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n    return x\n")
    g = import_graph(pkg)
    assert g == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert find_cycle(g) == ["pkg.a", "pkg.b", "pkg.a"]


def test_textkd_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in textkd: " + " -> ".join(cycle)


def test_every_core_module_imports_in_a_fresh_interpreter():
    """Each framework-free module imports on its own, first, in a new interpreter (an import
    order that only works after some other module was imported would fail here)."""
    core = [
        m
        for m in _modules(PACKAGE_DIR)
        if m.split(".")[1:2] in (["distill"], ["text"], ["evaluation"])
        or m
        in (
            "textkd",
            "textkd.models.backbones",
            "textkd.models.heads",
            "textkd.models.registry",
            "textkd.models.segmentor",
            "textkd.models.losses",
            "textkd.models.ocrnet",
            "textkd.models.stdc",
            "textkd.models.outputs",
            "textkd.models.weights",
            "textkd.models.convert",
        )
    ]
    core = [m for m in core if not m.endswith(("_evaluation",))]  # the evaluators are detectron2's
    core += ["textkd.data.datasets", "textkd.data.datasets.catalog"]
    assert "textkd.models.losses" in core
    code = (
        "import importlib, sys\n"
        "for m in sys.argv[1:]:\n"
        "    for k in [k for k in sys.modules if k == 'textkd' or k.startswith('textkd.')]:\n"
        "        del sys.modules[k]\n"
        "    importlib.import_module(m)\n"
        "    assert 'detectron2' not in sys.modules, m\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *core], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        pytest.fail(f"a core module does not import on its own:\n{proc.stderr[-3000:]}")


def test_library_does_not_import_benchmarks_or_tests():
    """The benchmarks (timers, loop references) live outside the library: no textkd module
    imports the top-level ``benchmarks`` package (or the test helpers)."""
    offenders = []
    for name, path in _modules(PACKAGE_DIR).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            offenders += [
                f"{name}: {m}" for m in mods if m.split(".")[0] in ("benchmarks", "_d2_helpers")
            ]
    assert not offenders, offenders
    assert not (PACKAGE_DIR / "benchmark.py").exists()
    assert not (PACKAGE_DIR / "distill" / "reference.py").exists()
