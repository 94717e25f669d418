"""The package's import graph: no cycles, and lower layers never import higher ones.

Every module under ``src/loris`` is parsed (not imported) and each ``import`` / ``from ... import``
of a loris module is resolved, the ones inside functions included: a function-local import is how a
cycle hides. Then each module is imported in a fresh interpreter, so an order-dependent import
(one that works only because another module happened to load first) fails here too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import loris

ROOT = Path(loris.__file__).parent
PACKAGE = "loris"

# (importer prefix, imported prefix) pairs that must never occur: the layer table of DESIGN.md.
FORBIDDEN = [
    ("loris.models", "loris.export"),
    ("loris.models", "loris.trainers"),
    ("loris.models", "loris.generation"),
    ("loris.models", "loris.face"),
    ("loris.models", "loris.api"),
    ("loris.kernels", "loris.models"),
    ("loris.data", "loris.trainers"),
    ("loris.generation", "loris.face"),
    ("loris.export", "loris.face"),
    ("loris.trainers", "loris.face"),
    ("loris.generation", "loris.trainers"),
    ("loris.generation", "loris.export"),
    ("loris.export", "loris.trainers"),
    ("loris.lora", "loris.export"),
    ("loris.peft_format", "loris.export"),
    # distributed/ (process group, DDP/FSDP2 wrappers, torchrun command) needs torch alone
    *[
        ("loris.distributed", f"loris.{up}")
        for up in ("models", "trainers", "export", "face", "generation", "data", "lora", "quant", "api")
    ],
]
# The command line, recipes and demos sit on top: nothing in the library imports them.
TOP = ("loris.cli", "loris.chat_cli", "loris.train_recipe", "loris.demos")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The loris modules ``name`` imports anywhere in its body (type-checking-only imports aside)."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` blocks never run
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, path.name == "__init__.py", node)
            # `from pkg import sub` imports the submodule when there is one
            targets = [
                loris._LAZY[a.name]  # `from loris import X` loads X's module (the package is lazy)
                if base == PACKAGE and a.name in loris._LAZY
                else f"{base}.{a.name}"
                if f"{base}.{a.name}" in modules
                else base
                for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_function_local_and_relative_imports():
    graph = import_graph()
    assert "loris.models.config" in graph["loris.models.decoder"]
    assert "loris.face" in graph["loris.chat_cli"]  # `from loris import X` is lazy: X's module
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_lower_layers_never_import_higher_ones():
    bad = [
        f"{src} imports {dst}"
        for src, targets in import_graph().items()
        for dst in targets
        for low, high in FORBIDDEN
        if (src == low or src.startswith(low + ".")) and (dst == high or dst.startswith(high + "."))
    ]
    bad += [
        f"{src} imports {dst}"
        for src, targets in import_graph().items()
        for dst in targets
        if not src.startswith(TOP) and src != PACKAGE and dst.startswith(TOP)
    ]
    assert not bad, "\n".join(sorted(bad))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(all_modules()))
def test_each_module_imports_alone(name):
    result = subprocess.run(
        [sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
