"""The import graph of ``cnnjax/``: no cycle, and the layers import only downwards.

The graph is read from the source with :mod:`ast`, not by importing: every ``import``/``from ... import``
statement counts, at module level and inside functions alike (a function-level import is how a cycle hides).
Rules of the edges:

* ``import a.b.c`` is an edge to ``a.b.c``; an edge to a package means its ``__init__``;
* ``from a.b import name`` is an edge to the submodule ``a.b.name`` if there is one, else to ``a.b``;
* relative imports are resolved against the importing module's package;
* a package ``__init__`` importing its own submodules is an edge like any other;
* the implicit import of parent packages (``import a.b`` runs ``a/__init__``) adds no edge.

Layers (each may import the ones listed after it, never the ones before): the CLI package ``train`` (never
imported by ``cnnjax``), ``cnnjax.models`` (never ``data``, ``weights``, ``analysis``, ``training``),
``cnnjax.nn`` (only ``cnnjax.ops``), ``cnnjax.ops`` (no other ``cnnjax`` layer); ``cnnjax.training`` never
imports ``cnnjax.analysis`` or ``cnnjax.weights`` (those that need training import the core).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_files(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of ``root / package`` (``__init__`` -> the package)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name ``from ... import`` reads from (relative imports against the module's package)."""
    if not node.level:
        return node.module or ""
    parts = (module if is_package else module.rpartition(".")[0]).split(".")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def module_imports(module: str, path: Path, modules: set[str] | dict) -> tuple[set[str], set[str]]:
    """(edges of ``module`` to ``modules``, every dotted name it imports, external ones included), from every
    import statement anywhere in the file (module level, functions, classes, ``if`` blocks)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    edges: set[str] = set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.name)
                if alias.name in modules:
                    edges.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            names.add(base)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # ``from pkg import submodule``: the submodule
                    names.add(sub)
                    edges.add(sub)
                elif base in modules:  # ``from pkg import name``: the package (its ``__init__``) or module
                    edges.add(base)
    return edges, names


def import_graph(root: Path, package: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(``{module: modules of the package it imports}``, ``{module: every dotted name it imports}``)."""
    files = module_files(root, package)
    edges, raw = {}, {}
    for module, path in files.items():
        edges[module], raw[module] = module_imports(module, path, files)
    return edges, raw


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the directed graph, or None."""
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    return import_graph(ROOT, "cnnjax")


def test_graph_sees_function_level_and_package_edges(graph):
    edges, _ = graph
    assert "cnnjax.ops.conv" in edges["cnnjax.ops"]           # a package __init__ importing its submodule
    assert "cnnjax.nn" in edges["cnnjax.models.base"]          # ``from cnnjax import nn``: the package
    assert "cnnjax.data.digits" in edges["cnnjax.data"]        # imported inside a function
    assert "cnnjax.ops.products" in edges["cnnjax.ops.gemm"]   # ``from cnnjax.ops import products``: the submodule
    assert "cnnjax.ops" not in edges["cnnjax.ops.gemm"]


def test_no_import_cycle_in_cnnjax(graph):
    edges, _ = graph
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _violations(edges: dict[str, set[str]], layer: str, allowed: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in edges.items() if _in(m, layer) for t in targets
                  if not any(_in(t, a) for a in allowed))


def test_ops_imports_no_other_layer(graph):
    edges, _ = graph
    assert _violations(edges, "cnnjax.ops", ("cnnjax.ops",)) == []


def test_nn_imports_only_ops(graph):
    edges, _ = graph
    assert _violations(edges, "cnnjax.nn", ("cnnjax.nn", "cnnjax.ops")) == []


def test_models_import_no_upper_layer(graph):
    edges, _ = graph
    forbidden = ("cnnjax.data", "cnnjax.weights", "cnnjax.analysis", "cnnjax.training")
    bad = sorted(f"{m} -> {t}" for m, targets in edges.items() if _in(m, "cnnjax.models") for t in targets
                 if any(_in(t, f) for f in forbidden))
    assert bad == []


def test_training_core_imports_no_analysis(graph):
    """The training core sits above models/data/transfer/checkpoint; the analysis tools train through it, never
    the other way round."""
    edges, _ = graph
    bad = sorted(f"{m} -> {t}" for m, targets in edges.items() if _in(m, "cnnjax.training") for t in targets
                 if _in(t, "cnnjax.analysis") or _in(t, "cnnjax.weights"))
    assert bad == []
    assert "cnnjax.training" in edges["cnnjax.analysis.training"] or any(
        _in(t, "cnnjax.training") for t in edges["cnnjax.analysis.training"])


def test_ops_import_conv_only_from_the_package_init(graph):
    edges, _ = graph
    assert sorted(m for m, targets in edges.items() if "cnnjax.ops.conv" in targets) == ["cnnjax.ops"]


@pytest.mark.parametrize("leaf", ["cnnjax.ops.geometry", "cnnjax.ops.tracing"])
def test_leaf_modules_import_nothing_from_cnnjax(graph, leaf):
    edges, raw = graph
    assert edges[leaf] == set()
    assert not any(_in(n, "cnnjax") for n in raw[leaf])


def test_geometry_comes_from_the_leaf(graph):
    """The algorithms and the layers read ``pair``/``normalize_padding``/``conv_output_size`` from geometry."""
    edges, _ = graph
    for module in ("cnnjax.ops.winograd", "cnnjax.ops.fft", "cnnjax.nn.conv", "cnnjax.nn.pool"):
        assert "cnnjax.ops.geometry" in edges[module], module
    assert "cnnjax.ops.tracing" in edges["cnnjax.models.base"]
    assert "cnnjax.ops.autotune" not in edges["cnnjax.models.base"]


def test_cnnjax_never_imports_the_cli_package(graph):
    _, raw = graph
    bad = sorted(f"{m} -> {n}" for m, names in raw.items() for n in names if _in(n, "train"))
    assert bad == []


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_cycle_through_a_function_level_import_is_found(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.a import f\n",
        "pkg/a.py": "from pkg import b\n\ndef f():\n    return b.g()\n",
        "pkg/b.py": "def g():\n    from .a import f  # hidden in a function\n    return f\n",
        "pkg/c.py": "import pkg.b\n",
    })
    edges, _ = import_graph(tmp_path, "pkg")
    assert edges == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.b"}}
    assert find_cycle(edges) == ["pkg.a", "pkg.b", "pkg.a"]


def test_cycle_through_a_package_init_is_found(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.sub import thing\n",
        "pkg/sub/__init__.py": "from .mod import thing\n",
        "pkg/sub/mod.py": "from pkg import other\nthing = 1\n",   # 'other' is a name of pkg: an edge to pkg
    })
    edges, _ = import_graph(tmp_path, "pkg")
    assert edges["pkg.sub.mod"] == {"pkg"}
    cycle = find_cycle(edges)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"pkg", "pkg.sub", "pkg.sub.mod"}


def test_acyclic_package_passes(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.a import f\n",
        "pkg/a.py": "from pkg.b import g\n\ndef f():\n    from . import b\n    return g() + b.g()\n",
        "pkg/b.py": "import os\n\ndef g():\n    return os.sep\n",
    })
    edges, _ = import_graph(tmp_path, "pkg")
    assert find_cycle(edges) is None
