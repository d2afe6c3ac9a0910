"""The project's import graph, read from the source (AST), without importing anything.

Modules are the ``.py`` files of the given packages (a package is its ``__init__``). An edge
``a -> b`` is an import statement in ``a`` (at any depth: function-level imports count) that
names module ``b``: ``import b``, ``from b import name`` (or ``from pkg import b`` when ``b`` is a
module of ``pkg``). Used by tests/test_layers.py.
"""

from __future__ import annotations

import ast
import configparser
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("harness", "methods", "evals")
DYNAMIC_CALLS = {"import_module", "__import__", "exec_module", "spec_from_file_location", "entry_points"}


@dataclass
class Graph:
    modules: dict[str, Path]
    edges: dict[str, set[str]] = field(default_factory=dict)
    dynamic: dict[str, list[str]] = field(default_factory=dict)   # module -> dynamic-import calls it makes
    external: dict[str, set[str]] = field(default_factory=dict)   # module -> top-level names of other packages


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def build(root: Path, packages=PACKAGES) -> Graph:
    files = [p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))]
    g = Graph({module_name(root, p): p for p in files})

    def resolve(name: str) -> str | None:
        while name and name not in g.modules:     # a name inside a module: the module itself
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in g.modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    t = resolve(a.name)
                    if t:
                        targets.add(t)
                    elif a.name.split(".")[0] not in packages:
                        g.external.setdefault(mod, set()).add(a.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    full = ".".join(base + ([node.module] if node.module else []))
                else:
                    full = node.module or ""
                    if full.split(".")[0] not in packages:
                        g.external.setdefault(mod, set()).add(full.split(".")[0])
                for a in node.names:
                    t = resolve(f"{full}.{a.name}") if f"{full}.{a.name}" in g.modules else resolve(full)
                    if t:
                        targets.add(t)
            elif isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
                if name in DYNAMIC_CALLS:
                    g.dynamic.setdefault(mod, []).append(f"{name}() at line {node.lineno}")
        targets.discard(mod)
        g.edges[mod] = targets
    return g


def cycles(g: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.edges.get(v, ())):
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

    for v in sorted(g.modules):
        if v not in index:
            visit(v)
    return out


def one_cycle(g: Graph, comp: list[str]) -> list[str]:
    """A concrete cycle a -> b -> ... -> a inside a strongly connected component (for messages)."""
    members = set(comp)
    start = comp[0]
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in g.edges[path[-1]] if w in members)
        back = [w for w in nxt if w in seen]
        if back:
            i = path.index(back[0])
            return path[i:] + [back[0]]
        path.append(nxt[0])
        seen.add(nxt[0])


def layers(config: Path) -> list[list[str]]:
    """The layers contract of an import-linter config, top first; each layer a list of siblings."""
    cp = configparser.ConfigParser()
    cp.read(config)
    for section in cp.sections():
        if cp[section].get("type") == "layers":
            rows = [r.strip() for r in cp[section]["layers"].strip().splitlines() if r.strip()]
            return [[m.strip() for m in r.replace(":", "|").split("|")] for r in rows]
    raise ValueError(f"{config}: no layers contract")


def layer_violations(g: Graph, stack: list[list[str]]) -> list[str]:
    """Direct imports that go up the layer stack, or sideways between independent siblings."""
    def where(mod: str) -> tuple[int, str] | None:
        for depth, row in enumerate(stack):
            for member in row:
                if mod == member or mod.startswith(member + "."):
                    return depth, member
        return None

    bad = []
    for a, targets in g.edges.items():
        la = where(a)
        if la is None:
            continue
        for b in sorted(targets):
            lb = where(b)
            if lb is None:
                continue
            if lb[0] < la[0] or (lb[0] == la[0] and lb[1] != la[1]):
                bad.append(f"{a} imports {b} ({la[1]} may not import {lb[1]})")
    return bad
