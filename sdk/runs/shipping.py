"""Local files a run needs on its node besides the data (a reward's Python file): checked before launch, then
copied into the run folder under their content hash (files/<sha256[:16]>-<name>) with files.json naming each, so
the node, local or in a cloud, reads exactly the bytes that were checked, and the run folder records them."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Any

from sdk.core.errors import SpecError
from sdk.objectives import objective_of
from sdk.store.runfolder import FILES_INDEX, RunFolder


def _function_defined(path: Path, function: str, field: str) -> None:
    """The file compiles and defines `function` at top level: checked without running the user's code here."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise SpecError(f"{field}: {path}:{exc.lineno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{field}: {path}: cannot be read ({exc})") from None
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    names |= {(a.asname or a.name).split(".")[0] for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
              for a in n.names}  # `from scoring import score`: the node imports it (only this file is shipped)
    if function not in names:
        defined = ', '.join(sorted(names)) or 'none'
        raise SpecError(f"{field}: {path} defines no function {function!r} (it defines: {defined})")


def check_shipped(spec: Any) -> list[tuple[str, str, Path]]:
    """(field, name as written, local path) of every file the objective needs, each checked: it exists, compiles and
    defines the function named after its ':'."""
    out = []
    for field, name, path_text in objective_of(spec).ships(spec.objective):
        path = Path(path_text).expanduser()
        if not path.is_file():
            raise SpecError(f"{field}: {path_text}: no such file (paths are relative to {Path.cwd()})")
        _function_defined(path, name.rpartition(":")[2], field)
        out.append((field, name, path))
    return out


def ship(spec: Any, folder: RunFolder) -> dict[str, dict[str, str]]:
    """Copy the checked files into the run folder and write files.json: {name as written: {key, sha256}}."""
    index = {}
    for _, name, path in check_shipped(spec):
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()
        key = f"files/{digest[:16]}-{path.name}"
        folder.store.put_bytes(folder.key(key), body)
        index[name] = {"key": key, "sha256": digest, "path": str(path)}
    if index:
        folder.write_json(FILES_INDEX, index)
    return index
