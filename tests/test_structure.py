"""The package's structure, measured on its source with ``ast``: the import graph has no cycle, every import goes to a
module of the same or an earlier stage (:data:`atomsnb.stages.STAGES`), and imports sit in module headers (an import inside a
function is allowed only for an optional or heavy third-party package, with a comment saying so)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import atomsnb
import atomsnb.stages

PKG = Path(atomsnb.__file__).resolve().parent
STDLIB = set(sys.stdlib_module_names)


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _targets(node, here: str, mods: dict) -> list[str]:
    """atomsnb modules an import statement reaches (relative or absolute), the package itself included."""
    pkg = here if mods[here].name == "__init__.py" else here.rsplit(".", 1)[0]
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        names = [mod] + [f"{mod}.{a.name}" for a in node.names]
    return [n for n in names if n in mods and n != here]


def import_graph(mods: dict | None = None) -> dict[str, set[str]]:
    """module -> the atomsnb modules it imports anywhere in its source."""
    mods = mods or _modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                       for t in _targets(node, name, mods)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None (depth-first search)."""
    state, stack = {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (c := visit(w)):
                return c
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (c := visit(v)):
            return c
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) >= 30 and sum(map(len, graph.values())) >= 80  # the graph was read, not empty
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_every_module_belongs_to_one_stage_and_imports_only_its_own_or_earlier_stages():
    stage = {}
    for i, (_, modules) in enumerate(atomsnb.stages.STAGES):
        for m in modules:
            assert f"atomsnb.{m}" not in stage, f"{m} is listed in two stages"
            stage[f"atomsnb.{m}"] = i
    graph = import_graph()
    assert set(graph) - {"atomsnb"} == set(stage), {"not in STAGES": sorted(set(graph) - {"atomsnb"} - set(stage)),
                                                    "in STAGES, no file": sorted(set(stage) - set(graph))}
    upward = [f"{a} (stage {stage[a] + 1}) imports {b} (stage {stage[b] + 1})"
              for a, bs in graph.items() if a in stage for b in bs if b in stage and stage[b] > stage[a]]
    assert not upward, upward


def _function_imports(tree):
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield node


def test_imports_sit_in_module_headers_unless_optional_or_heavy_and_commented():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in _function_imports(ast.parse("\n".join(lines))):
            top = (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else node.names[0].name.split(".")[0]
            where = f"{path.relative_to(PKG.parent)}:{node.lineno}"
            if (isinstance(node, ast.ImportFrom) and node.level) or top == "atomsnb":
                bad.append(f"{where}: atomsnb import inside a function (move it to the header)")
            elif top in STDLIB:
                bad.append(f"{where}: standard-library import inside a function (move it to the header)")
            elif not any("#" in lines[k] for k in range(max(0, node.lineno - 2), node.end_lineno)):
                bad.append(f"{where}: third-party import inside a function without a comment saying why")
    assert not bad, "\n".join(bad)


def test_no_function_body_is_over_80_lines():
    """Functions stay readable: at most 80 lines of code each (the docstring, which documents shapes, units and errors,
    is not counted); a longer one is split into named pieces, as train_sae's schedules and history are."""
    long = []
    for name, path in _modules().items():
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = fn.body[0]
                doc = (first.end_lineno - first.lineno + 1 if isinstance(first, ast.Expr)
                       and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str) else 0)
                n = fn.end_lineno - fn.lineno + 1 - doc
                if n > 80:
                    long.append(f"{path.relative_to(PKG.parent)}:{fn.lineno} {fn.name}: {n} lines")
    assert not long, long
