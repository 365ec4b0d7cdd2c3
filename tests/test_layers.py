"""One-way layers: the client (`sdk/`) never imports the node (`launch/`), and the node imports only the core the
two sides share, plus the client modules listed below, each a known arrow the architecture work removes. An AST
walk over every import, at module level or inside a function, so a new wrong-way arrow fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What both sides import: the contract (spec, methods, precision, errors), the run folder and store, the shared
# facts about models, data and rendering.
CORE = {
    "sdk", "sdk.core.errors", "sdk.core.spec", "sdk.core.validation", "sdk.core.methods", "sdk.core.precision", "sdk.core.architectures",
    "sdk.core.modelref", "sdk.data.builtin", "sdk.store.runfolder", "sdk.store", "sdk.core.summary", "sdk.data.formats", "sdk.data.rows",
    "sdk.data.check", "sdk.data.rendering", "sdk.data.tokencount", "sdk.store.grants", "sdk.core.parts",
}
# The node's remaining arrows into client code (issue 24 removes them): module -> why it is still there.
KNOWN_NODE_TO_CLIENT = {
    "sdk.runs": "the node tools (merge, generate, eval, serve) open runs through the client's Run handle",
    "sdk.serving": "the serving node reads its plan model and key variable from the client's serving module",
    "sdk.runs.tools": "launch/tools/serve.py merges through the client's helper, which respawns python -m launch.tools.merge",
    "sdk.core.recipes": "launch/tiny.py reads a recipe for `tiny-model --like RECIPE`",
    "sdk.core.plan": "the node logs the planner's estimate beside the measured peak",
}


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
        for line, name in imports(path, root):
            if name == "launch" or name.startswith("launch."):
                problems.append(f"{path.relative_to(root)}:{line}: the client imports the node ({name})")
    sdk_modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                   for p in (root / "sdk").rglob("*.py")}
    for path in sorted((root / "launch").rglob("*.py")):
        for line, name in imports(path, root):
            if name in sdk_modules and name not in CORE and name not in KNOWN_NODE_TO_CLIENT:
                problems.append(f"{path.relative_to(root)}:{line}: the node imports client-only {name}")
    return problems


def test_imports_go_one_way():
    assert wrong_way(ROOT) == []


def test_a_wrong_way_import_is_caught(tmp_path):
    """The same walk over a copy with one deliberate arrow each way."""
    import shutil

    for folder in ("sdk", "launch"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "sdk" / "probe.py").write_text("def f():\n    from launch.train import build_trainer\n")
    (tmp_path / "launch" / "probe.py").write_text("from sdk import sweeps\n")
    assert wrong_way(tmp_path) == [
        "sdk/probe.py:2: the client imports the node (launch.train)",
        "sdk/probe.py:2: the client imports the node (launch.train.build_trainer)",
        "launch/probe.py:1: the node imports client-only sdk.sweeps",
    ]


def test_every_known_arrow_still_exists():
    """A known arrow that is gone is taken off the list (so the list shrinks to nothing, never hides a new one)."""
    used = {name for path in (ROOT / "launch").rglob("*.py") for _, name in imports(path)}
    assert sorted(set(KNOWN_NODE_TO_CLIENT) - used) == []
