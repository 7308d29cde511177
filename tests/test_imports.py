"""Imports run one way: no cycle between rnnlab's modules, every import goes down the layers, and the layout that
``src/rnnlab/__init__.py``'s docstring describes is the one on disk.

The graph is read from the source with :mod:`ast`, not by importing, so an import that only runs later (inside a
function, a method, ``if TYPE_CHECKING:`` or ``try:``) counts as much as one at the top of a module: a lazy import
that goes up the layers hides a cycle, it does not remove it. What counts:

* every ``import rnnlab.x`` and ``from ... import`` whose module is in rnnlab, relative ones resolved against the
  importing module's package; ``from P import n`` is an edge to the module ``P.n`` when that is a module, else to
  ``P`` itself (a package's ``__init__``); ``import a.b.c`` is an edge to the longest prefix that is a module;
* a module importing itself (``from . import x`` in a package's ``__init__`` naming its own attribute) is no edge;
* the one exemption: imports inside a module-level ``def __getattr__`` whose body names ``DeprecationWarning``.
  Such a function is a deprecation shim (PEP 562): it runs only when a caller asks an old path for a moved name,
  after every module has been imported, and it warns; it keeps an old import path working for one release and
  must not count as the old module depending on the new one (``rnnlab.diagnostics.tracking`` is one: the tracker
  moved up to ``rnnlab.train.tracking``). Nothing else is exempt.

:func:`find_cycles` is checked on a synthetic graph too (``test_find_cycles_names_a_cycle``), and
``test_an_added_cycle_is_caught`` feeds it the real graph plus one import from ``sequence`` back up to ``layers``.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rnnlab"

# The layers, bottom to top (issue 15). An import may go to its own rank or a lower one; a module takes the rank of
# the longest entry that is a prefix of its name (a package's rank covers its submodules). Inside one package
# (one entry) the cycle check is the only rule.
LAYERS: list[tuple[str, ...]] = [
    ("rnnlab.errors", "rnnlab._checks"),                 # errors and argument checks: used by everything
    ("rnnlab.data",),                                    # tasks and their data: no model code
    ("rnnlab.sequence",),                                # the types layers and kernels share
    ("rnnlab.functional",),                              # every step's maths
    ("rnnlab.kernels",),                                 # the reference loop and the compiled kernels
    ("rnnlab.cellspec",),                                # CellSpec + SPECS, the one list of cells
    ("rnnlab.cells",),
    ("rnnlab.layers",),
    ("rnnlab.variants", "rnnlab.init"),                  # the public variant classes; init presets
    ("rnnlab",),                                         # the package's __init__: the public API
    ("rnnlab.diagnostics",),
    ("rnnlab.models", "rnnlab.bench", "rnnlab.export", "rnnlab.convert"),
    ("rnnlab.train",),
    ("rnnlab.report",),
    ("rnnlab.commands",),
    ("rnnlab.cli", "rnnlab.__main__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
MODEL_CODE = ("rnnlab.sequence", "rnnlab.functional", "rnnlab.kernels", "rnnlab.cellspec", "rnnlab.cells",
              "rnnlab.layers", "rnnlab.variants", "rnnlab.init", "rnnlab.diagnostics", "rnnlab.models",
              "rnnlab.bench", "rnnlab.export")


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module
    line: int
    where: str  # "top", "function", "type-checking" (the exempt shim imports are left out of the graph)

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({module_path(self.source)}:{self.line}, {self.where})"


def module_names(root: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root`` (a package's ``__init__.py`` is the package)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = ("rnnlab",) + path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = module_names()


def module_path(name: str) -> str:
    return str(MODULES[name].relative_to(SRC.parent)) if name in MODULES else name


def _known(name: str) -> str | None:
    """The longest prefix of ``name`` that is an rnnlab module, or None outside rnnlab."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def _is_shim_getattr(node: ast.AST, depth: int) -> bool:
    return (depth == 0 and isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
            and any(isinstance(n, ast.Name) and n.id == "DeprecationWarning" for n in ast.walk(node)))


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, source: str) -> list[Import]:
    """Every import of an rnnlab module in ``source`` (the text of module ``name``), anywhere in it."""
    package = name if MODULES.get(name, Path()).name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str | None, line: int, where: str) -> None:
        imp = Import(name, target or "", line, where)
        if target is not None and target != name and imp not in found:
            found.append(imp)

    def visit(node: ast.AST, depth: int, where: str) -> None:
        if _is_shim_getattr(node, depth):
            return  # exempt: see the module docstring
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_known(alias.name), node.lineno, where)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] == "rnnlab":
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    add(sub if sub in MODULES else _known(base), node.lineno, where)
        inner = depth + isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
        if where == "top" and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            where = "function"
        for child in ast.iter_child_nodes(node):
            visit(child, inner, "type-checking" if _is_type_checking(node) and child in node.body else where)

    visit(ast.parse(source), 0, "top")
    return found


def import_graph(modules: dict[str, Path] = MODULES) -> list[Import]:
    return [imp for name, path in modules.items() for imp in imports_of(name, path.read_text())]


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module, as ``[a, b, ..., a]`` (the shortest
    through the component's first module)."""
    return [cycle_through(comp[0], edges) for comp in strong_components(edges)]


def strong_components(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: the modules that
    import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            connect(v)
    return components


def cycle_through(start: str, edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle ``[start, ..., start]`` (breadth first), or ``[]`` when ``start`` is on none."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges.get(v, ())):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
                if w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    return []


def as_edges(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in imports:
        edges.setdefault(imp.source, set()).add(imp.target)
    return edges


def rank(name: str) -> tuple[int, str]:
    """(rank, layer entry) of a module: its longest prefix in :data:`RANK`. The entry ``rnnlab`` (the package's
    ``__init__``) is the package's own module only, not a default for modules the table does not name."""
    parts = name.split(".")
    while len(parts) > 1:
        key = ".".join(parts)
        if key in RANK:
            return RANK[key], key
        parts.pop()
    if name == "rnnlab":
        return RANK[name], name
    raise KeyError(f"{name} is in no layer of tests/test_imports.py's LAYERS")


GRAPH = import_graph()


def _explain(component: list[str], imports: list[Import], start: str | None = None) -> str:
    """One cycle through ``start`` (default: the component's first module) with the import lines that make it,
    the modules on cycles with it, their other imports of each other, and which of these go up the layers."""
    cycle = cycle_through(start or component[0], as_edges(imports))
    lines = [f"{' -> '.join(cycle)}   (modules on cycles with it: {', '.join(component)})"]
    for a, b in zip(cycle, cycle[1:]):
        lines += [f"    {imp}" for imp in imports if imp.source == a and imp.target == b]
    inside = [imp for imp in imports if imp.source in component and imp.target in component]
    lines += [f"    also: {imp}" for imp in inside if (imp.source, imp.target) not in zip(cycle, cycle[1:])]
    lines += [f"    up the layers (the imports to remove): {imp}" for imp in inside
              if rank(imp.target)[0] > rank(imp.source)[0]]
    return "\n".join(lines)


def test_no_import_cycle():
    components = strong_components(as_edges(GRAPH))
    assert not components, "import cycles:\n" + "\n".join(_explain(c, GRAPH) for c in components)


def test_find_cycles_names_a_cycle():
    """The cycle finder on a synthetic graph: a three-module cycle and a two-module one are found and named; a DAG
    with a diamond has none."""
    dag = {"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}
    assert find_cycles(dag) == []
    cyclic = {**dag, "d": {"a"}, "x": {"y"}, "y": {"x"}, "z": {"x"}}
    cycles = find_cycles(cyclic)
    assert sorted(map(tuple, cycles)) == [("a", "b", "d", "a"), ("x", "y", "x")]


def test_an_added_cycle_is_caught():
    """The real graph plus one lazy import from sequence up to layers (what an import inside a function of
    sequence.py would add) puts both on one cycle, which the check names: sequence -> layers -> ... -> sequence."""
    extra = imports_of("rnnlab.sequence", "def f():\n    from .layers import RNNBase\n")
    assert extra == [Import("rnnlab.sequence", "rnnlab.layers", 2, "function")]
    assert cycle_through("rnnlab.sequence", as_edges(GRAPH)) == []
    edges = as_edges(GRAPH + extra)
    cycle = cycle_through("rnnlab.sequence", edges)
    assert cycle[:2] == ["rnnlab.sequence", "rnnlab.layers"] and cycle[-1] == "rnnlab.sequence", cycle
    component = next(c for c in strong_components(edges) if "rnnlab.sequence" in c)
    assert "rnnlab.layers" in component
    message = _explain(component, GRAPH + extra)
    assert f"up the layers (the imports to remove): {extra[0]}" in message, message


def test_what_counts_as_an_import():
    """Relative imports resolve against the package; a TYPE_CHECKING import counts; a deprecation shim's
    module-level __getattr__ does not; ``from package import submodule`` is an edge to the submodule."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import torch\n"
        "from . import reference\n"
        "from .. import functional as RF\n"
        "from ..sequence import SequenceRun\n"
        "if TYPE_CHECKING:\n"
        "    from ..layers import RNNBase\n"
        "import rnnlab.cells.nothing\n"
        "class K:\n"
        "    def f(self):\n"
        "        from rnnlab.diagnostics import probe\n"
        "def __getattr__(name):\n"
        "    import warnings\n"
        "    warnings.warn('moved', DeprecationWarning)\n"
        "    from ..train import trainer\n"
    )
    got = [(i.target, i.where) for i in imports_of("rnnlab.kernels.fused", source)]
    assert got == [("rnnlab.kernels.reference", "top"), ("rnnlab.functional", "top"), ("rnnlab.sequence", "top"),
                   ("rnnlab.layers", "type-checking"), ("rnnlab.cells", "top"),
                   ("rnnlab.diagnostics.probe", "function")]
    # a package's __init__ resolves `.` to itself
    assert [i.target for i in imports_of("rnnlab.data", "from .base import Task\nfrom ..errors import E\n")] == [
        "rnnlab.data.base", "rnnlab.errors"]


def test_every_module_has_a_layer():
    unplaced = []
    for name in MODULES:
        try:
            rank(name)
        except KeyError:
            unplaced.append(name)
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"


def test_imports_go_down_the_layers():
    """sequence <- functional <- kernels <- cellspec <- cells <- layers <- diagnostics <- models/bench/export <-
    train <- report <- commands <- cli (issue 15): every import goes to a module of the same or a lower layer."""
    upward = [f"{imp}: layer {rank(imp.source)[1]!r} imports the higher {rank(imp.target)[1]!r}"
              for imp in GRAPH if rank(imp.target)[0] > rank(imp.source)[0]]
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_data_and_sequence_import_no_model_code():
    """data/ sits low: it imports no model code; sequence.py imports nothing from rnnlab."""
    bad = [str(imp) for imp in GRAPH
           if (imp.source.startswith("rnnlab.data") and imp.target.startswith(MODEL_CODE))
           or imp.source == "rnnlab.sequence"]
    assert not bad, "\n".join(bad)


def test_diagnostics_imports_neither_train_nor_data():
    bad = [str(imp) for imp in GRAPH if imp.source.startswith("rnnlab.diagnostics")
           and imp.target.startswith(("rnnlab.train", "rnnlab.data", "rnnlab.report", "rnnlab.commands"))]
    assert not bad, "\n".join(bad)


def test_deprecated_tracking_path_warns_and_gives_the_same_objects():
    import importlib

    from rnnlab.train import tracking

    old = importlib.import_module("rnnlab.diagnostics.tracking")
    for name in ("GradientTracker", "layer_grad_norms"):
        with pytest.warns(DeprecationWarning, match=rf"rnnlab\.diagnostics\.tracking\.{name} moved to "
                                                    rf"rnnlab\.train\.tracking\.{name}"):
            assert getattr(old, name) is getattr(tracking, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            old.nothing_here  # noqa: B018


# ---- the layout in src/rnnlab/__init__.py's docstring ----

def documented_modules() -> list[tuple[str, bool]]:
    """``(module, top level?)`` for every module the layout tree of ``rnnlab/__init__.py``'s docstring names, in
    order. The tree is the docstring's last literal block (after ``::``): a line ``name.py`` or ``name/`` (a
    package), children indented under their package; other lines (descriptions, ``csrc/*.cpp``) name no module.
    Read from the source text, not by importing."""
    doc = ast.get_docstring(ast.parse((SRC / "__init__.py").read_text())) or ""
    tree = doc.rsplit("::\n", 1)[-1]
    names: list[tuple[str, bool]] = []
    parents: list[tuple[int, str]] = [(-1, "rnnlab")]
    for line in tree.splitlines():
        m = re.match(r"^(\s*)([A-Za-z_]\w*)(\.py|/)(?=\s|$)", line)
        if not m:
            continue
        indent, stem, kind = len(m.group(1)), m.group(2), m.group(3)
        while parents[-1][0] >= indent:
            parents.pop()
        name = f"{parents[-1][1]}.{stem}" if stem != "__init__" else parents[-1][1]
        names.append((name, len(parents) == 1))
        if kind == "/":
            parents.append((indent, name))
    return names


def test_layout_docstring_names_every_module():
    """The tree in rnnlab/__init__.py names every module on disk and no other (kernels/options.py, merged into
    fused.py, is gone), each once."""
    documented = [name for name, _ in documented_modules()]
    assert len(documented) == len(set(documented)), f"named twice: {sorted(documented)}"
    missing, extra = set(MODULES) - set(documented), set(documented) - set(MODULES)
    assert not extra, f"named in rnnlab/__init__.py but not on disk: {sorted(extra)}"
    assert not missing, f"on disk but not in rnnlab/__init__.py's layout: {sorted(missing)}"


def test_layout_docstring_lists_the_layers_bottom_up():
    """The tree's top-level entries come in the order of :data:`LAYERS` (so reading it down is reading up the
    imports)."""
    top = [name for name, is_top in documented_modules() if is_top]
    ranks = [rank(name)[0] for name in top]
    assert ranks == sorted(ranks), [f"{name}: {r}" for name, r in zip(top, ranks)]
