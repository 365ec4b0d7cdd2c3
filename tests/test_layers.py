"""One-way layers: the packages of `sdk` stack in LAYERS (each imports only its own layer and those below), the
client (`sdk/`) never imports the node (`launch/`), and the node imports only the shared core (`sdk.core`,
`sdk.objectives`, `sdk.store`, `sdk.data`, `sdk.evaluation`). An AST walk over every import, at module level or inside a function, so a new
wrong-way arrow fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The packages of `sdk`, bottom layer first. A package imports its own layer and the ones below, never above.
# The first four are the core both sides share; the node (`launch`) imports them and nothing else of `sdk`.
LAYERS = [
    {"sdk.core", "sdk.objectives"},  # the contract: spec, methods, objectives (one module each), precision, model
    # references, planner, recipes, errors
    {"sdk.store"},  # object stores, the run folder, read-only grants
    {"sdk.data"},  # data formats, rows, the pre-launch check, rendering (reads s3:// data through the store)
    {"sdk.evaluation"},  # generation metrics (the node scores with them after training, the client compares runs)
    {"sdk.importers"},  # Axolotl / LLaMA-Factory configs -> recipes: a pure mapping over the core and the data formats
    {"sdk.machine"},  # this machine's client state: home, registry, process identity
    {"sdk.backends"},  # where a run executes: local processes, SkyPilot
    {"sdk.runs", "sdk.exports"},  # the Run handle: submit, status, wait, fetch; the node tools' client side; exports
    {"sdk.serving", "sdk.sweeps"},  # built on runs
    {"sdk.api"},  # the OpenAI-compatible API: a thin layer over runs, the store and serving
    {"sdk.cli", "sdk.entry"},  # parse, call the SDK, print
]
SHARED = set().union(*LAYERS[:4])
LAYER_OF = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every module a file imports (absolute names; relative imports resolved), with its line."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]  # `from sdk import runs`
    return found


def wrong_way(root: Path) -> list[str]:
    problems = []
    for path in sorted((root / "sdk").rglob("*.py")):
        here = package_of(".".join(path.relative_to(root).with_suffix("").parts))
        for line, name in imports(path, root):
            where = f"{path.relative_to(root)}:{line}"
            if name == "launch" or name.startswith("launch."):
                problems.append(f"{where}: the client imports the node ({name})")
            elif name.startswith("sdk.") and here in LAYER_OF and package_of(name) in LAYER_OF \
                    and LAYER_OF[package_of(name)] > LAYER_OF[here]:
                problems.append(f"{where}: {here} imports {package_of(name)}, a layer above it ({name})")
    for path in sorted((root / "launch").rglob("*.py")):
        for line, name in imports(path, root):
            if name.startswith("sdk.") and package_of(name) not in SHARED and not name.startswith("sdk.__"):
                problems.append(f"{path.relative_to(root)}:{line}: the node imports client-only {name}")
    return problems


def test_every_package_has_a_layer():
    """A new package under sdk/ is placed in LAYERS (its place is a decision, not an accident)."""
    packages = {f"sdk.{p.parent.name}" for p in (ROOT / "sdk").glob("*/__init__.py")}
    modules = {f"sdk.{p.stem}" for p in (ROOT / "sdk").glob("*.py") if p.stem != "__init__"}
    assert sorted((packages | modules) - set(LAYER_OF)) == []


def test_imports_go_one_way():
    assert wrong_way(ROOT) == []


def test_a_wrong_way_import_is_caught(tmp_path):
    """The same walk over a copy with one deliberate arrow of each kind."""
    import shutil

    for folder in ("sdk", "launch"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "sdk" / "runs" / "probe.py").write_text("def f():\n    from launch.train import build_trainer\n")
    (tmp_path / "sdk" / "core" / "probe.py").write_text("from sdk.runs import get_run\n")
    (tmp_path / "launch" / "probe.py").write_text("from sdk import sweeps\n")
    assert wrong_way(tmp_path) == [
        "sdk/core/probe.py:1: sdk.core imports sdk.runs, a layer above it (sdk.runs)",
        "sdk/core/probe.py:1: sdk.core imports sdk.runs, a layer above it (sdk.runs.get_run)",
        "sdk/runs/probe.py:2: the client imports the node (launch.train)",
        "sdk/runs/probe.py:2: the client imports the node (launch.train.build_trainer)",
        "launch/probe.py:1: the node imports client-only sdk.sweeps",
    ]


def unresolved(paths: list[Path], root: Path = ROOT) -> list[str]:
    """Every project import (`sdk.*`, `launch.*`, `tests.*`), at module level or inside a function, names a module
    that exists and, for `from M import N`, a name M defines: a lazy import inside a function runs only when that
    path does, so a moved module fails here rather than in the one slow test that reaches it."""
    import importlib

    problems = []
    for path in paths:
        package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                pairs = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                pairs = [(base, alias.name) for alias in node.names]
            else:
                continue
            for module, name in pairs:
                if module.split(".")[0] not in {"sdk", "launch"}:
                    continue
                where = f"{path.relative_to(root)}:{node.lineno}"
                try:
                    imported = importlib.import_module(module)
                except ImportError as exc:
                    problems.append(f"{where}: {module}: {exc}")
                    continue
                if name and name != "*" and not hasattr(imported, name):
                    try:
                        importlib.import_module(f"{module}.{name}")
                    except ImportError:
                        problems.append(f"{where}: {module} has no {name}")
    return list(dict.fromkeys(problems))


def test_every_project_import_resolves():
    paths = [p for folder in ("sdk", "launch", "tests", "examples") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert unresolved(paths) == []


def test_a_moved_module_is_caught(tmp_path):
    (tmp_path / "probe.py").write_text("def later():\n    from sdk.runs.gone import home\n    from sdk.serving import Nope\n")
    assert unresolved([tmp_path / "probe.py"], tmp_path) == [
        "probe.py:2: sdk.runs.gone: No module named 'sdk.runs.gone'", "probe.py:3: sdk.serving has no Nope"]


# Packages whose modules import each other in a circle today (a lazy import inside a function breaking the tie at
# import time); every other package's modules form no circle, and a new one fails here. Shrink this, never grow it.
CYCLIC_PACKAGES = {"sdk.core", "sdk.store", "sdk.backends", "sdk.runs", "sdk.serving", "sdk.sweeps", "sdk.evaluation",
                   "sdk.api", "launch"}


def cycles(root: Path = ROOT) -> dict[str, list[list[str]]]:
    """Per package, each circle of its modules importing one another (module- or function-level imports): the
    strongly connected components of the package's own import graph with more than one module."""
    modules = {}
    for path in [*sorted((root / "sdk").rglob("*.py")), *sorted((root / "launch").rglob("*.py"))]:
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    package = {name: name if path.name == "__init__.py" else name.rpartition(".")[0] for name, path in modules.items()}
    graph = {name: {m for _, m in imports(path, root) if m in modules and m != name and package[m] == package[name]}
             for name, path in modules.items()}
    found: dict[str, list[list[str]]] = {}
    for name in sorted(graph):
        circle = sorted({name} | {m for m in _reach(graph, name) if name in _reach(graph, m)})
        if len(circle) > 1 and circle not in found.get(package[name], []):
            found.setdefault(package[name], []).append(circle)
    return found


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_cycle_inside_a_package():
    """No module of a package imports another that imports it back (directly or round a longer circle), outside the
    packages listed in CYCLIC_PACKAGES; each listed one still has a circle (none listed needlessly)."""
    found = cycles()
    assert {p: c for p, c in found.items() if p not in CYCLIC_PACKAGES} == {}
    assert sorted(CYCLIC_PACKAGES - set(found)) == []


def test_an_import_cycle_is_caught(tmp_path):
    import shutil

    for folder in ("sdk", "launch"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "sdk" / "data" / "rows.py").write_text("def later():\n    from sdk.data.turns import read_turns\n")
    assert cycles(tmp_path)["sdk.data"] == [["sdk.data.rows", "sdk.data.tools", "sdk.data.turns"]]
