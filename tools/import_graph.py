"""The import graph of the project's packages (caffe, deeplab, densecrf), from the source: every
``import`` / ``from ... import`` of a project module, at module level or inside a function.

    python tools/import_graph.py            # cycles and package edges; exit 1 on a cycle
    python tools/import_graph.py --edges    # every module edge

A package's ``__init__`` counts as its own module; ``from pkg import name`` is an edge to
``pkg.name`` where that is a module, else to ``pkg``.
"""
from __future__ import annotations

import argparse
import ast
import pathlib
import sys

PACKAGES = ("caffe", "deeplab", "densecrf")
# The one direction packages may import each other in (an edge against it is an error).
ALLOWED = {"deeplab": {"caffe", "densecrf"}, "caffe": {"densecrf"}, "densecrf": set()}
# Entry points that only hand over to a command above them (``python -m densecrf``).
SHIMS = {"densecrf.__main__"}
# Only commands (and the shims) import the command layer: libraries never drive a command.
COMMANDS = "deeplab.commands"


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every module of the project's packages: dotted name -> file."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def edges(root: pathlib.Path) -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    mods = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else subs + [target]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in mods and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    """Edges against the one direction (ALLOWED between packages, commands on top), as 'a -> b'."""
    bad = []
    for a, targets in sorted(graph.items()):
        if a in SHIMS:
            continue
        for b in sorted(targets):
            pa, pb = a.split(".")[0], b.split(".")[0]
            upward = pa != pb and pb not in ALLOWED[pa]
            drives_a_command = b.startswith(COMMANDS + ".") and not a.startswith(COMMANDS)
            if upward or drives_a_command:
                bad.append(f"{a} -> {b}")
    return bad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(pathlib.Path(__file__).resolve().parent.parent))
    parser.add_argument("--edges", action="store_true", help="print every module edge")
    args = parser.parse_args(argv)
    graph = edges(pathlib.Path(args.root))
    if args.edges:
        for a, targets in sorted(graph.items()):
            print(a, "->", " ".join(sorted(targets)))
    between = sorted({(a.split(".")[0], b.split(".")[0]) for a, t in graph.items() for b in t
                      if a.split(".")[0] != b.split(".")[0] and a not in SHIMS})
    print("packages:", ", ".join(f"{a} -> {b}" for a, b in between))
    problems = [f"cycle: {' <-> '.join(c)}" for c in cycles(graph)] + [f"wrong way: {e}" for e in wrong_way(graph)]
    for p in problems:
        print(p)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} edges, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
