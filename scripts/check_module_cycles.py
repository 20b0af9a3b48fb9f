#!/usr/bin/env python3
"""Fails if two modules of the crate use each other, directly or round a loop.

Every `.rs` file under src/ is a module (mod.rs and lib.rs name their directory). A
reference `crate::a::b::...` or `super::x` from module P is an edge between the two
siblings under their deepest common parent: from `crate::fs::core` to `crate::store::x`
is fs -> store; from `crate::fs::core` to `crate::fs::dirs` is core -> dirs (within fs).
A child using its parent's own items (`super::Thing` defined in the parent's file) is not
an edge. Prints every cycle found; exit 1 if any.

Usage: scripts/check_module_cycles.py [SRC_DIR]   (default: src)
"""
import re
import sys
from collections import defaultdict
from pathlib import Path

PATH_RE = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def module_of(src: Path, f: Path) -> tuple[str, ...]:
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    files = [f for f in src.rglob("*.rs") if f.name != "main.rs"]
    modules = {module_of(src, f) for f in files}
    edges = defaultdict(set)  # (parent path) -> {(a, b)}

    def resolve(mod, head, tail):
        base = () if head == "crate" else mod
        segs = [s for s in tail.split("::") if s]
        while head == "super" and segs and segs[0] == "super":
            segs.pop(0)
            base = base[:-1]
        if head == "super":
            base = base[:-1]
        target = base
        for s in segs:  # the longest prefix that is a module
            if target + (s,) in modules:
                target = target + (s,)
            else:
                break
        return target

    def add(mod, target):
        # The deepest common parent, and the children of it on each side.
        n = 0
        while n < min(len(mod), len(target)) and mod[n] == target[n]:
            n += 1
        if n == len(mod) or n == len(target):
            return  # one contains the other: a parent using its child, or the reverse
        edges[mod[:n]].add((mod[n], target[n]))

    for f in files:
        mod = module_of(src, f)
        text = strip_comments(f.read_text())
        # Test modules may reach anywhere: they are not part of the layering.
        if "tests" in mod or f.parent.name == "tests":
            continue
        text = re.split(r"#\[cfg\(test\)\]\s*mod\s+tests\s*\{", text)[0]
        for m in USE_GROUP_RE.finditer(text):
            for item in re.split(r"[,\s]+", m.group(3)):
                item = item.split("::")[0].strip("{} ")
                if item and item != "self":
                    add(mod, resolve(mod, m.group(1), m.group(2) + "::" + item))
        for m in PATH_RE.finditer(text):
            add(mod, resolve(mod, m.group(1), m.group(2)))

    cycles = []
    for parent, es in sorted(edges.items()):
        graph = defaultdict(set)
        for a, b in es:
            graph[a].add(b)
        # Tarjan's strongly connected components.
        index, low, stack, on, comps, i = {}, {}, [], set(), [], [0]

        def visit(v):
            index[v] = low[v] = i[0]
            i[0] += 1
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
                    comps.append(sorted(comp))

        for v in sorted(set(graph) | {b for bs in graph.values() for b in bs}):
            if v not in index:
                visit(v)
        where = "crate" if not parent else "crate::" + "::".join(parent)
        for comp in comps:
            links = sorted(f"{a} -> {b}" for a, b in es if a in comp and b in comp)
            cycles.append(f"in {where}: {', '.join(comp)} use each other ({'; '.join(links)})")
    for c in cycles:
        print(c)
    if cycles:
        return 1
    print(f"no module cycles ({len(modules)} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
