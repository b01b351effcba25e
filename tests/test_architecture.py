"""The import graph of `agent` has no cycle at all, between any two of its modules.

import-linter's `acyclic_siblings` contract (in pyproject.toml, run by `lint-imports`) finds cycles between sibling
packages and modules, but a cycle through a package's own `__init__` (agent.x -> agent.x.y -> agent.x) is not one
between siblings and escapes it. This test looks at the module graph itself, built by grimp (import-linter's graph
library) from the same roots and with the same treatment of `if TYPE_CHECKING:` imports as the contracts.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import grimp

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _graph() -> grimp.ImportGraph:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    roots = settings.get("root_packages") or [settings["root_package"]]
    # grimp skips a folder without __init__.py inside a package: every package of agent must be a regular one
    missing = [
        str(folder.relative_to(ROOT))
        for folder in (ROOT / "agent").rglob("*")
        if folder.is_dir() and folder.name != "__pycache__" and not (folder / "__init__.py").exists()
    ]
    assert not missing, f"{missing} have no __init__.py: the import contracts cannot see them"
    spec = importlib.util.find_spec("agent")
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    assert origin == ROOT / "agent" / "__init__.py", (
        f"`agent` is imported from {origin}, not from this checkout"
    )
    return grimp.build_graph(
        *roots,
        exclude_type_checking_imports=bool(settings.get("exclude_type_checking_imports", False)),
        cache_dir=None,
    )


def _strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """The groups of two or more modules that reach each other (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, imported = work[-1]
            for other in imported:
                if other not in index:
                    index[other] = low[other] = len(index)
                    stack.append(other)
                    on_stack.add(other)
                    work.append((other, iter(sorted(graph.find_modules_directly_imported_by(other)))))
                    break
                if other in on_stack:
                    low[module] = min(low[module], index[other])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    group: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == module:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return groups


def _circles(graph: grimp.ImportGraph, group: list[str]) -> list[str]:
    """For each import inside the group, the shortest circle it lies on (each circle once), with the import lines."""
    found: set[tuple[str, ...]] = set()
    for importer in group:
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            chain = (
                graph.find_shortest_chain(importer=imported, imported=importer) if imported in group else None
            )
            if chain:
                ring = (importer, *chain[:-1])
                first = ring.index(min(ring))
                found.add(ring[first:] + ring[:first])
    lines = []
    for ring in sorted(found, key=lambda ring: (len(ring), ring)):
        steps = [ring[0]]
        for importer, imported in itertools.pairwise((*ring, ring[0])):
            details = graph.get_import_details(importer=importer, imported=imported)
            at = ", ".join(f"l.{line}" for line in sorted({detail["line_number"] for detail in details}))
            steps.append(f"-({at})-> {imported}")
        lines.append(" ".join(steps))
    return lines


def test_no_import_cycle_between_any_modules() -> None:
    graph = _graph()
    assert "agent.daemon.app" in graph.modules, "the daemon is missing from the graph: check root_packages"
    circles = [circle for group in _strongly_connected(graph) for circle in _circles(graph, group)]
    assert not circles, "import cycles in agent:\n" + "\n".join(circles)
