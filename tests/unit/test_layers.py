"""Package layering: which tuneforge package may import which, no package-level cycles, no private
names reached across packages.

Every ``import`` / ``from ... import`` under src/tuneforge counts, at any depth (inside functions,
``if TYPE_CHECKING:`` blocks, try/except), with relative imports resolved. A module's package is the
first component after ``tuneforge`` (``tuneforge.train.run`` -> ``train``); a single-file module is
its own package (``tuneforge.recipe`` -> ``recipe``).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "tuneforge"

# Single-file modules at the bottom (and the import-light package root, for ``__version__``): anything
# may import them. They may import each other, but none of the packages above them.
BASE = {"tuneforge", "errors", "atomic", "sections", "console", "config_io", "figures", "sysinfo"}

# Layers bottom to top: a package may import the base modules, the packages of every lower layer, and
# itself; never a package of its own layer or above. models sits below data: data's augmentation and
# preview load models (models.generation, models.build), while models reads no data module.
LAYERS: list[set[str]] = [
    {"models"},
    {"data"},
    {"tasks"},
    {"recipe"},
    {"evaluate"},
    {"export"},
    {"train"},
    {"plan", "stages", "tune"},
    {"doctor"},
    {"cli"},
]

#: package -> the packages (besides itself) it may import.
ALLOWED: dict[str, set[str]] = {}
for _i, _layer in enumerate(LAYERS):
    for _name in _layer:
        ALLOWED[_name] = set(BASE).union(*LAYERS[:_i])
for _name in BASE:
    ALLOWED[_name] = set(BASE)  # each other only (a cycle among them still fails below)
ALLOWED["tuneforge"] = set()  # tuneforge/__init__.py stays import-light: nothing of tuneforge
# serve sits beside the stack: it loads and runs what export wrote, so it may read export and what lies
# below it, never training, tuning, planning or the commands. Only the CLI starts it.
ALLOWED["serve"] = set(BASE) | {"models", "data", "tasks", "recipe", "evaluate", "export"}
ALLOWED["cli"].add("serve")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tuneforge":
        return None
    if len(parts) == 1:
        return "tuneforge"
    return parts[1]


def _imports(path: Path):
    """Yield (lineno, imported module, imported name or None) for every tuneforge import in ``path``."""
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tuneforge":
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                drop = node.level - 1
                base = base[: len(base) - drop] if drop else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tuneforge":
                continue
            for alias in node.names:
                # ``from tuneforge.pkg import mod`` imports a submodule: its package is pkg either way.
                yield node.lineno, target, alias.name


def _target_package(target: str, name: str | None) -> str | None:
    """The package an import reaches: ``from tuneforge import recipe`` reaches recipe (a submodule),
    ``from tuneforge import __version__`` the package root."""
    if target == "tuneforge" and name is not None and ((SRC / name).is_dir() or (SRC / f"{name}.py").is_file()):
        return _package_of(f"{target}.{name}")
    return _package_of(target)


def _all_imports():
    for path in sorted(SRC.rglob("*.py")):
        src_pkg = _package_of(_module_name(path))
        for lineno, target, name in _imports(path):
            yield path, lineno, src_pkg, target, name, _target_package(target, name)


def _where(path: Path, lineno: int) -> str:
    return f"{path.relative_to(SRC.parents[1])}:{lineno}"


def test_every_package_is_in_the_table():
    packages = {_package_of(_module_name(p)) for p in SRC.rglob("*.py")}
    missing = sorted(p for p in packages if p not in ALLOWED)
    assert not missing, f"packages with no place in the layer table: {missing}"


def test_imports_follow_the_layers():
    bad = []
    for path, lineno, src_pkg, target, name, dst_pkg in _all_imports():
        if dst_pkg is None or dst_pkg == src_pkg:
            continue
        if dst_pkg not in ALLOWED.get(src_pkg, set()):
            what = target if name is None else f"{target} import {name}"
            bad.append(f"{_where(path, lineno)}: {src_pkg} may not import {dst_pkg} ({what})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def _groups(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of packages that import each other, directly or not (strongly connected components of
    more than one package; Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def _shortest_path(graph: dict[str, set[str]], start: str, goal: str, within: set[str]) -> list[str]:
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        if node == goal:
            return paths[node]
        for nxt in sorted(graph.get(node, ()) & within):
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"no path {start} -> {goal}")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """For every import edge a -> b inside a group of packages that import each other, the shortest cycle
    through it (``[a, b, ..., a]``), each cycle once."""
    cycles: dict[tuple[str, ...], list[str]] = {}
    for group in _groups(graph):
        for a in sorted(group):
            for b in sorted(graph[a] & group):
                cycle = [a] + _shortest_path(graph, b, a, group)
                turn = cycle[:-1].index(min(cycle[:-1]))  # the same cycle from another package: once
                key = tuple(cycle[turn:-1] + cycle[:turn])
                cycles.setdefault(key, list(key) + [key[0]])
    return sorted(cycles.values(), key=lambda c: (len(c), c))


def test_no_package_import_cycles():
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for path, lineno, src_pkg, _target, _name, dst_pkg in _all_imports():
        if dst_pkg is None or dst_pkg == src_pkg:
            continue
        graph.setdefault(src_pkg, set()).add(dst_pkg)
        where.setdefault((src_pkg, dst_pkg), _where(path, lineno))
    cycles = _cycles(graph)
    assert not cycles, "package import cycles:\n" + "\n".join(
        " -> ".join(cycle) + "".join(f"\n  {a} -> {b} first at {where[(a, b)]}" for a, b in zip(cycle, cycle[1:]))
        for cycle in cycles
    )


def test_no_private_names_across_packages():
    bad = []
    for path, lineno, src_pkg, target, name, dst_pkg in _all_imports():
        if dst_pkg is None or dst_pkg == src_pkg:
            continue
        private = [p for p in target.split(".")[1:] if p.startswith("_") and not p.startswith("__")]
        if name is not None and name.startswith("_") and not name.startswith("__"):
            private.append(name)
        if private:
            what = target if name is None else f"{target} import {name}"
            bad.append(f"{_where(path, lineno)}: {src_pkg} imports private {', '.join(private)} ({what})")
    assert not bad, "private names imported from another package:\n" + "\n".join(bad)


def test_the_checker_sees_relative_and_nested_imports(tmp_path, monkeypatch):
    """The parser resolves relative imports and finds imports inside functions."""
    pkg = tmp_path / "tuneforge" / "evaluate"
    pkg.mkdir(parents=True)
    (tmp_path / "tuneforge" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from ..train import run\n")
    (pkg / "x.py").write_text("def f():\n    from ..data.report import _y\n    import tuneforge.cli\n")
    monkeypatch.setitem(globals(), "SRC", tmp_path / "tuneforge")
    found = sorted((_package_of(_module_name(p)), t, n) for p in SRC.rglob("*.py") for _l, t, n in _imports(p))
    assert found == [
        ("evaluate", "tuneforge.cli", None),
        ("evaluate", "tuneforge.data.report", "_y"),
        ("evaluate", "tuneforge.train", "run"),
    ]
