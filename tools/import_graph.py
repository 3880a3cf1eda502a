"""Print the package's module import graph and check its layering: ``python tools/import_graph.py``.

Every import of a ``fms_dgt`` module counts, also those inside functions and under
``TYPE_CHECKING`` (a cycle hidden from the interpreter is still a cycle in the design). Each module
belongs to a layer, from the bottom up; a module may import modules of its own layer or of lower
ones, never of a higher one, and no group of modules may import each other in a cycle.
Exit code 0 when both hold, 1 otherwise; ``--quiet`` prints only the problems.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fms_dgt"

# From the bottom up. A module's layer is the first entry that is the module or a package above it.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundations", ["fms_dgt", "fms_dgt.errors", "fms_dgt.registry", "fms_dgt.plugins", "fms_dgt.conversation",
                     "fms_dgt.stats", "fms_dgt.spend", "fms_dgt.caller", "fms_dgt.templates", "fms_dgt.datafiles",
                     "fms_dgt.config", "fms_dgt.usage", "fms_dgt.flag_types", "fms_dgt.prefetch"]),
    ("stages and engines", ["fms_dgt.engines", "fms_dgt.stages", "fms_dgt.formatters", "fms_dgt.lm_client"]),
    ("task", ["fms_dgt.task", "fms_dgt.loader"]),
    ("conversation", ["fms_dgt.pipeline"]),
    ("run", ["fms_dgt.output", "fms_dgt.chart", "fms_dgt.report", "fms_dgt.view", "fms_dgt.progress",
             "fms_dgt.forecast", "fms_dgt.breaker", "fms_dgt.budget", "fms_dgt.guard", "fms_dgt.pacing",
             "fms_dgt.dedup", "fms_dgt.quality", "fms_dgt.executors",
             "fms_dgt.runner"]),
    ("interfaces", ["fms_dgt.api", "fms_dgt.validate", "fms_dgt.preview", "fms_dgt.export", "fms_dgt.cli",
                    "fms_dgt.public", "fms_dgt.__main__", "fms_dgt.testing"]),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (``from a import b`` counts a.b if b is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in known else base)
    return {t for t in targets if t in known and t != name}


def layer(name: str) -> int:
    best, index = -1, -1
    for i, (_, members) in enumerate(LAYERS):
        for member in members:
            inside = name.startswith(member + ".") and member != PACKAGE  # the package root holds only itself
            if (name == member or inside) and len(member) > best:
                best, index = len(member), i
    if index < 0:
        raise SystemExit(f"{name} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return index


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="print only the problems")
    args = parser.parse_args(argv)
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    if not args.quiet:
        for number, (title, _) in enumerate(LAYERS):
            print(f"layer {number}: {title}")
            for name in sorted(n for n in graph if layer(n) == number):
                print(f"  {name} -> {', '.join(sorted(graph[name])) or '(nothing)'}")
    problems = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)}), a higher layer"
        for name, targets in sorted(graph.items()) for target in sorted(targets) if layer(target) > layer(name)
    ]
    problems += [f"import cycle: {' <-> '.join(group)}" for group in cycles(graph)]
    for problem in problems:
        print(problem)
    if not problems and not args.quiet:
        print("no cycle, no import from a higher layer")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
