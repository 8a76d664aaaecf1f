"""The package import graph: no cycle between packages and no import up the declared order.

Every ``import`` in ``devft_lab/`` counts, those inside function bodies too (they are real
dependencies, only deferred). A node is a subpackage (``core``, ``fl``, ...) or a top-level module
(``cli``, ``bench``); ``devft_lab`` itself (the version string) is the floor under everything.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "devft_lab"
PACKAGE = "devft_lab"

# The declared order, lowest first (docs/configuration.md#code-layout and the README say the same):
# a node may import only nodes of a strictly lower rank. Names that share a rank (teach, flower)
# may not import each other.
LAYERS: list[tuple[str, ...]] = [
    (PACKAGE, "stats"),  # devft_lab/__init__.py: __version__; devft_lab/stats.py: bootstrap statistics (pure numpy)
    ("data",),
    ("core",),
    ("method",),
    ("fl",),
    ("plans",),
    ("runner",),
    ("experiments",),
    ("teach", "flower"),
    ("cli", "bench"),  # the command line and ``python -m devft_lab.bench``
]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    base = root / rel
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def module_imports(root: Path = ROOT) -> dict[str, set[str]]:
    """Every module under ``root`` -> the ``devft_lab`` modules it imports anywhere in its body."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path, root)
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from . import x / from ..core import y
                    base = here[: len(here) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                for a in node.names:  # from devft_lab.core import layers: the module core.layers
                    sub = f"{src}.{a.name}"
                    targets.add(sub if _is_module(sub, root) else src)
        graph[mod] = {t for t in targets if t == PACKAGE or t.startswith(PACKAGE + ".")}
    return graph


def node_of(module: str) -> str:
    """devft_lab.core.train -> core; devft_lab.cli -> cli; devft_lab -> devft_lab."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for mod, targets in imports.items():
        a = node_of(mod)
        graph.setdefault(a, set()).update(node_of(t) for t in targets if node_of(t) != a)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return sorted(found)


def upward(graph: dict[str, set[str]], layers: list[tuple[str, ...]] = LAYERS) -> list[tuple[str, str]]:
    """Edges a -> b where b's rank is not below a's; also edges touching a node with no rank."""
    rank = {name: i for i, names in enumerate(layers) for name in names}
    bad = []
    for a, targets in graph.items():
        for b in targets:
            if a not in rank or b not in rank or rank[b] >= rank[a]:
                bad.append((a, b))
    return sorted(bad)


def where(imports: dict[str, set[str]], a: str, b: str) -> list[str]:
    """The modules of node a that import node b (for the error message)."""
    return sorted(m for m, ts in imports.items() if node_of(m) == a and any(node_of(t) == b for t in ts))


def test_the_checker_finds_a_cycle_and_an_upward_import():
    """A synthetic graph: core -> runner -> fl -> core is a cycle, and core -> runner goes up."""
    g = {"core": {"data", "runner"}, "runner": {"core", "fl"}, "fl": {"core"}, "data": set()}
    assert cycles(g) == [["core", "fl", "runner"]]
    assert upward(g) == [("core", "runner")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert upward({"teach": {"flower"}}) == [("teach", "flower")]  # same rank: not allowed
    assert upward({"core": {"newpkg"}}) == [("core", "newpkg")]  # an unplaced package fails
    fine = {"runner": {"core", "fl", "data"}, "fl": {"core"}, "core": {"data", PACKAGE}}
    assert cycles(fine) == [] and upward(fine) == []


def test_the_checker_reads_imports_inside_functions(tmp_path):
    """A function-local import is an edge too, and relative imports resolve to their package."""
    pkg = tmp_path / PACKAGE
    for d in ("core", "runner"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from devft_lab.runner import b\n")
    (pkg / "runner" / "b.py").write_text("from ..core import a\n")
    g = package_graph(module_imports(pkg))
    assert g["core"] == {"runner"} and g["runner"] == {"core"}
    assert cycles(g) == [["core", "runner"]] and upward(g) == [("core", "runner")]


def test_every_package_is_placed_in_the_order():
    nodes = {node_of(module_name(p)) for p in ROOT.rglob("*.py")}
    placed = {n for names in LAYERS for n in names}
    assert nodes <= placed, f"place {sorted(nodes - placed)} in LAYERS of tests/test_import_graph.py (and the docs)"


def test_no_package_level_import_cycle():
    imports = module_imports()
    found = cycles(package_graph(imports))
    assert not found, (f"package import cycles {found}: move the shared code down to the lower package "
                       f"(see LAYERS in tests/test_import_graph.py)")


def test_no_import_up_the_declared_order():
    imports = module_imports()
    bad = upward(package_graph(imports))
    lines = [f"{a} -> {b} (in {', '.join(where(imports, a, b))})" for a, b in bad]
    assert not bad, ("imports up the order " + " < ".join(", ".join(n) for n in LAYERS) + ":\n  "
                     + "\n  ".join(lines) + "\nmove the imported code down, or the importing code up")


# Files whose function-local imports another part of issue 34 still has to hoist or mark (their
# bodies were being rewritten in parallel); empty this set as each is done.
PENDING_LOCAL_IMPORTS: set[str] = set()  # files whose local imports are still to be sorted out (none)
TAG = "optional/heavy:"


def unmarked_local_imports(path: Path, root: Path = ROOT) -> list[str]:
    """Imports inside a function body whose lines carry no ``# optional/heavy: NAME`` comment."""
    text = path.read_text()
    lines = text.splitlines()
    out = []
    for fn in ast.walk(ast.parse(text)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    if not any(TAG in lines[i - 1] for i in range(node.lineno, node.end_lineno + 1)):
                        out.append(f"{path.relative_to(root.parent)}:{node.lineno}: {ast.unparse(node)}")
    return sorted(set(out))


def test_the_local_import_check_reads_the_comment(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef f():\n    import json\n    import yaml  # optional/heavy: yaml\n"
                 "    from matplotlib import (pyplot,  # optional/heavy: matplotlib\n                            cm)\n")
    assert [s.split(": ", 1)[1] for s in unmarked_local_imports(f, tmp_path)] == ["import json"]


def test_imports_inside_functions_are_heavy_or_optional_and_say_so():
    """An import goes inside a function only for a heavy or optional dependency (or to break a load
    cycle), with ``# optional/heavy: NAME`` on its line; everything else sits at the top."""
    bad = [s for p in sorted(ROOT.rglob("*.py")) if str(p.relative_to(ROOT)) not in PENDING_LOCAL_IMPORTS
           for s in unmarked_local_imports(p)]
    assert not bad, ("move these imports to the top of their module, or mark a heavy/optional one "
                     "with `# optional/heavy: NAME`:\n  " + "\n  ".join(bad))
