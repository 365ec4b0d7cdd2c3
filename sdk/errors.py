"""Typed errors for users. Each names the field, file:line or URI it is about; a traceback is a bug."""

from __future__ import annotations


class FinetuneError(Exception):
    """Base class of every error the CLI prints as one clean message (exit code 2)."""

    exit_code = 2


class SpecError(FinetuneError):
    """The spec or recipe is invalid. `problems` holds one line per problem: '<where>: <message>'."""

    def __init__(self, problems: list[str] | str, *, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"invalid spec in {source}" if source else "invalid spec"
        body = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{head}:\n{body}")


class StoreError(FinetuneError):
    """An object-store operation failed; the message names the URI and the cause."""


class LaunchError(FinetuneError):
    """A run could not be launched or driven by its backend."""


class RunNotFound(FinetuneError):
    """No run with that id or URI exists in the registry or the store."""


class IntegrityError(StoreError):
    """A fetched file does not match the size or sha256 in its manifest."""
