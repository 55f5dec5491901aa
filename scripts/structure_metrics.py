"""Structure figures of the ``medclass`` package, read from the source as text (nothing is imported).

Prints and writes JSON: the modules at the package's top level, the import graph between top-level
units (a package or a top-level module), its cycles, the longest functions, and, given the layer
order of ``pyproject.toml``'s import-linter ``layers`` contract, the edges that point up.

Usage: python scripts/structure_metrics.py [--out FILE]
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "medclass"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Absolute ``medclass.*`` module names a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("medclass"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(stem + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("medclass"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def unit(mod: str, units: set[str]) -> str | None:
    parts = mod.split(".")
    if len(parts) < 2:
        return None
    u = parts[1]
    return u if u in units else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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


def layers_from_pyproject() -> list[list[str]]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        return []
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for c in data.get("tool", {}).get("importlinter", {}).get("contracts", []):
        if c.get("type") == "layers":
            return [[p.strip() for p in layer.split("|")] for layer in c["layers"]]
    return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    files = sorted(PKG.rglob("*.py"))
    top_modules = sorted(p.stem for p in PKG.glob("*.py"))
    units = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    units |= {m for m in top_modules if m not in ("__init__", "__main__")}
    names = {module_name(p): p for p in files}
    mod_graph: dict[str, set[str]] = {}
    unit_graph: dict[str, set[str]] = {u: set() for u in units}
    longest = []
    for name, path in names.items():
        deps = {d for d in imports_of(path, name) if d in names and d != name}
        mod_graph[name] = deps
        u = unit(name, units)
        for d in deps:
            v = unit(d, units)
            if u and v and u != v:
                unit_graph[u].add(v)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                longest.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    longest.sort(reverse=True)
    edges = sorted((u, v) for u, vs in unit_graph.items() for v in vs)
    layers = layers_from_pyproject()
    rank = {}
    for i, layer in enumerate(layers):  # import-linter: the first layer is the highest
        for m in layer:
            rank[m.removeprefix("medclass.")] = len(layers) - i
    upward = [(u, v) for u, v in edges if u in rank and v in rank and rank[v] > rank[u]]
    result = {
        "top_level_modules": [m for m in top_modules],
        "n_top_level_modules": len([m for m in top_modules if m not in ("__init__", "__main__")]),
        "units": sorted(units),
        "unit_edges": len(edges),
        "unit_cycles": cycles(unit_graph),
        "module_cycles": cycles(mod_graph),
        "layers": layers,
        "upward_edges": upward,
        "longest_functions": [{"lines": n, "where": w} for n, w in longest[:10]],
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
