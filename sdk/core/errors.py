"""Typed errors for users. Each names the field, file:line or URI it is about; a traceback is a bug."""

from __future__ import annotations

from dataclasses import dataclass


class FinetuneError(Exception):
    """Base class of every error the CLI prints as one clean message (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class FieldError:
    """One problem of a spec: the dotted field path, what is wrong, and where (file:line or --set) if known."""

    field: str
    message: str
    where: str | None = None

    def __str__(self) -> str:
        return f"{self.where + ': ' if self.where else ''}{self.field}: {self.message}"


class SpecError(FinetuneError, ValueError):
    """The spec or recipe is invalid. `errors` holds one FieldError per problem (field, message, where);
    `problems` the same as printed lines. A ValueError, like the pydantic error it replaces."""

    def __init__(self, problems: list[str | FieldError] | str | FieldError, *, source: str | None = None):
        items = [problems] if isinstance(problems, (str, FieldError)) else list(problems)
        self.errors = [p for p in items if isinstance(p, FieldError)]
        self.problems = [str(p) for p in items]
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


class ExportCheckFailed(FinetuneError):
    """An export was written but answers worse than the model it came from; its files are kept for inspection."""

    exit_code = 1
