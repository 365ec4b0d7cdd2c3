"""One form for a set of installed packages, shared by the node's run record, the node's environment cache and
`finetune rerun`: {canonical name: version}, written as sorted `name==version` lines and hashed as such."""

from __future__ import annotations

import hashlib
import re

# Not part of what a run trains with: the installers themselves, and this product (installed from the run's own
# build, whose version is recorded apart).
SKIPPED = frozenset({"pip", "setuptools", "wheel", "uv", "finetune"})


def canonical_name(name: str) -> str:
    """PEP 503's normalized name: `Foo_Bar.baz` and `foo-bar-baz` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_packages(path: list[str] | None = None) -> dict[str, str]:
    """The distributions importable here (or on `path`), by canonical name, SKIPPED left out."""
    import importlib.metadata as md

    found: dict[str, str] = {}
    for dist in md.distributions(path=path) if path is not None else md.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = canonical_name(name)
        if key not in SKIPPED and key not in found:  # the first on sys.path wins, as an import would
            found[key] = dist.version
    return dict(sorted(found.items()))


def lock_text(packages: dict[str, str]) -> str:
    named = sorted((canonical_name(n), v) for n, v in packages.items())
    return "".join(f"{name}=={version}\n" for name, version in named)


def lock_hash(packages: dict[str, str]) -> str:
    return hashlib.sha256(lock_text(packages).encode()).hexdigest()[:16]


def parse_lock(text: str) -> dict[str, str]:
    """`name==version` lines (comments and blank lines skipped) back into the mapping; ValueError naming a bad line."""
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"line {number}: {raw!r} is not name==version")
        out[canonical_name(name.strip())] = version.strip()
    return out
