"""The project's import graph (read with ``ast``, nothing is imported): no cycles, and the
layering between the roles.

Nodes are the modules of the project's packages (``common``, ``learner``, ``actors``,
``replay_service``, ``deploy``); ``a.b.__init__`` is ``a.b``. ``import a.b.c`` inside a module
outside ``a.b`` also runs ``a/__init__`` and ``a/b/__init__``, so it counts as importing those
packages too. Two scopes:

* module level: imports executed when a module is first imported (also those in class bodies,
  ``if``/``try`` blocks, but not under ``if TYPE_CHECKING:``); a cycle here can break an import
  depending on which module comes first;
* all: every import statement, also inside functions (deferred imports) and under
  ``if TYPE_CHECKING:``; a cycle there is still two modules that need each other;
* between sub-packages: the same graph with every module of a sub-package (``common.envs``)
  merged into one node, and the top-level modules of a package on their own (``common.goals``
  <-> ``common.envs`` is a cycle there).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "learner", "actors", "replay_service", "deploy")

Graph = dict[str, set[str]]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(body: list[ast.stmt], deferred: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements of ``body``: those run at import time; with ``deferred`` also those
    inside functions and under ``if TYPE_CHECKING:``."""
    out: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If):
            if deferred or not _is_type_checking(node.test):
                out += _import_nodes(node.body, deferred)
            out += _import_nodes(node.orelse, deferred)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if deferred:
                out += _import_nodes(node.body, deferred)
        else:  # class bodies, try/with/for/while blocks: look inside
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, None) or []:
                    inner = child.body if isinstance(child, ast.ExceptHandler) else [child]
                    out += _import_nodes(inner, deferred)
    return out


def _resolve(name: str) -> str | None:
    """The project module ``name`` is (or is inside: ``pkg.mod.attr`` -> ``pkg.mod``)."""
    mods = _modules()
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importing module's package
            is_pkg = _modules()[module].name == "__init__.py"
            pkg = module.split(".")[: len(module.split(".")) - node.level + is_pkg]
            base = ".".join([*pkg, base] if base else pkg)
        names = [f"{base}.{a.name}" for a in node.names] + [base]
    out = set()
    for name in names:
        target = _resolve(name)
        if target is None:
            continue
        out.add(target)
        # the packages above it run too, unless ``module`` is already inside them
        parts = target.split(".")
        for i in range(1, len(parts)):
            pkg = ".".join(parts[:i])
            if not (module == pkg or module.startswith(pkg + ".")):
                out.add(pkg)
    out.discard(module)
    return out


@cache
def import_graph(deferred: bool) -> Graph:
    """``module -> project modules it imports`` (module level; every import statement if
    ``deferred``)."""
    graph: Graph = {}
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = set().union(*(_targets(name, n) for n in _import_nodes(tree.body, deferred)))
    return graph


def _component(module: str) -> str:
    """``a.b.c...`` -> ``a.b`` (a top-level module, or a whole sub-package)."""
    return ".".join(module.split(".")[:2])


def component_graph(graph: Graph) -> Graph:
    out: Graph = {}
    for mod, deps in graph.items():
        src = _component(mod)
        out.setdefault(src, set()).update(_component(d) for d in deps)
        out[src].discard(src)
    return out


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _explain(graph: Graph, comps: list[list[str]]) -> str:
    lines = []
    for comp in comps:
        members = set(comp)
        for m in comp:
            lines.append(f"{m} -> {sorted(graph[m] & members)}")
    return "\n".join(lines)


def imports_between(graph: Graph, src: str, dst: str) -> dict[str, set[str]]:
    """Modules of package ``src`` that import modules of package ``dst``, with what."""
    out = {}
    for mod, deps in graph.items():
        if mod == src or mod.startswith(src + "."):
            bad = {d for d in deps if d == dst or d.startswith(dst + ".")}
            if bad:
                out[mod] = bad
    return out


def test_the_graph_sees_the_project():
    graph = import_graph(deferred=False)
    assert {"common.records", "learner.amago", "actors.rollout", "replay_service.sampler"} <= set(
        graph
    )
    assert "common.records" in graph["replay_service.sampler"]
    # importing a module of another sub-package runs that sub-package's __init__ too
    assert "common.envs" in graph["actors.rollout"]


@pytest.mark.parametrize("deferred", [False, True], ids=["module_level", "all"])
def test_no_import_cycles_between_modules(deferred):
    graph = import_graph(deferred)
    found = cycles(graph)
    assert not found, "import cycles:\n" + _explain(graph, found)


@pytest.mark.parametrize("deferred", [False, True], ids=["module_level", "all"])
def test_no_import_cycles_between_subpackages(deferred):
    graph = component_graph(import_graph(deferred))
    found = cycles(graph)
    assert not found, "import cycles between sub-packages:\n" + _explain(graph, found)


def test_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    "src,dst",
    [
        ("learner", "actors"),
        ("actors", "learner"),
        ("actors", "replay_service"),
        ("learner", "replay_service"),
        ("replay_service", "learner"),
        ("replay_service", "actors"),
        ("common", "learner"),
        ("common", "actors"),
        ("common", "replay_service"),
        ("common", "deploy"),
    ],
)
def test_peer_packages_never_import_each_other(src, dst):
    """The processes' packages are wired by deploy/run/builder.py (factories) and typed against
    common/ (roles, records, reports): none imports a peer, at module level or deferred."""
    found = imports_between(import_graph(deferred=True), src, dst)
    assert not found, found
