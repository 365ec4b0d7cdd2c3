"""`finetune rerun RUN`: the same spec (with `--set` overrides) as a new run, after checking that the data the run
read has not changed since (every file its record names, hashed again), with the packages it ran with: a cluster's
node installs them from lock.json; this machine cannot be reinstalled, so a local rerun shows how it differs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk.core.errors import FinetuneError, LaunchError
from sdk.core.record import RerunOf, RunRecord, package_changes

# How a rerun restores the packages the run resolved, by backend: a cluster's node setup installs lock.json exactly;
# the local backend runs in this client's own environment, which is compared with the record instead.
RESTORE = {"skypilot": "lock", "local": "compare"}


class DataChanged(FinetuneError):
    """A file the run read has other bytes now; the message names it and both hashes."""


class DataMissing(FinetuneError):
    """A file or folder the run read is gone: no flag makes a rerun of the same spec read it."""


@dataclass
class RerunPlan:
    """A rerun checked and ready to submit: the spec, the backend, and what the checks found."""

    source: Any  # sdk.runs.Run
    spec: Any  # FineTuneSpec
    backend: str
    rerun: RerunOf
    lock: dict[str, Any] | None = None
    recipe: Any = None  # sdk.core.record.RecipeGiven: the run's recipe as given, kept in the new record
    checked: int = 0  # data files found unchanged
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What was checked, for people: the data, what could not be checked, the packages."""
        out = [f"rerun of {self.rerun.run_id}: {self.checked} data file(s) unchanged"]
        out += [f"allowed (--allow-data-change): {line}" for line in self.rerun.data_changes]
        out += [f"not checked: {line}" for line in self.rerun.unchecked]
        return out + self.notes

    def submit(self) -> Any:
        from sdk.runs import submit
        from sdk.runs.record import Provenance

        return submit(self.spec, backend=self.backend, check_data=True,
                      provenance=Provenance(recipe=self.recipe, rerun=self.rerun, lock=self.lock))


def _finished_record(source: Any) -> RunRecord:
    """The record of a finished run, or LaunchError saying what can and cannot be checked."""
    from sdk.store.runfolder import TERMINAL

    state = source.status().state
    if state not in TERMINAL and state != "lost":
        raise LaunchError(f"run {source.id} is {state}: its data and packages could be checked, but a rerun of an "
                          f"unfinished run has no result to reproduce; wait for it (finetune status {source.id})")
    record = source.record()
    if record is None:
        raise LaunchError(f"run {source.id} has no run record (it ran before records were kept): its spec.json can be "
                          "launched again, but the data it read and its packages cannot be checked")
    return record


def _spec(source: Any, overrides: list[str]) -> Any:
    from sdk.core.recipes import apply_overrides
    from sdk.core.spec import parse_spec

    data, origin = apply_overrides(source.folder.read_json("spec.json"), overrides)
    return parse_spec(data, source=f"{source.uri}/spec.json",
                      locate=lambda path: next((w for p, w in origin.items() if tuple(path[:len(p)]) == p), None))


def _check_folders(plan: RerunPlan, record: RunRecord) -> tuple[list[str], list[str], set[str]]:
    """Each folder source the record lists, listed again: a file added or removed is a change (one line per folder),
    a folder gone is missing. Returns (changed lines, missing lines, recorded paths no longer there)."""
    from sdk.data.fingerprint import folder_listing, spec_sources

    declared = {src: kind for _, src, kind in spec_sources(plan.spec)}
    changed, missing, gone = [], [], set()
    for folder in record.client.folders if record.client else []:
        if folder.source not in declared:
            continue
        now = folder_listing(folder.source, declared[folder.source])
        base = Path(folder.source).expanduser().resolve()
        removed = sorted(set(folder.files) - set(now or []))
        gone |= {str(base / name) for name in removed}
        if now is None:
            missing.append(f"{folder.field}: {folder.source}: no such folder now (run {plan.rerun.run_id} read "
                           f"{len(folder.files)} file(s) from it)")
            continue
        added = sorted(set(now) - set(folder.files))
        parts = [f"{what} {', '.join(names)}" for what, names in (("added", added), ("removed", removed)) if names]
        if parts:
            changed.append(f"{folder.field}: folder {folder.source}: files changed since run {plan.rerun.run_id}: "
                           + "; ".join(parts))
    return changed, missing, gone


def _check_data(plan: RerunPlan, record: RunRecord, *, allow: bool) -> None:
    """Every file the record names that the new spec still reads, hashed again, and each folder source listed again;
    DataChanged unless allowed; DataMissing (no flag helps: the rerun cannot read it) when a file or folder is gone."""
    from sdk.data.fingerprint import recheck, spec_sources
    from sdk.runs.shipping import check_shipped

    sources = {source for _, source, _ in spec_sources(plan.spec)}
    shipped = {str(path) for _, _, path in check_shipped(plan.spec)}
    files = [f for f in record.data_files() if f.source in sources]
    files += [f for f in (record.client.files if record.client else []) if f.source in shipped]
    recorded = {f.source for f in files}
    plan.rerun.unchecked += [f"{fld}: {src}: not in run {plan.rerun.run_id}'s record (an override changed it)"
                             for fld, src, _ in spec_sources(plan.spec) if src not in recorded]
    changed, missing, gone = _check_folders(plan, record)
    for item in (f for f in files if f.path not in gone):  # a file removed from its folder: said once, above
        result = recheck(item)
        if result.state == "same":
            plan.checked += 1
        elif result.state in ("changed", "missing"):
            (changed if result.state == "changed" else missing).append(result.line(plan.rerun.run_id))
        else:
            plan.rerun.unchecked.append(result.line(plan.rerun.run_id))
    if missing:
        raise DataMissing("; ".join(missing) + ": the rerun cannot read it")
    if changed and not allow:
        raise DataChanged("\n".join(changed) + " (--allow-data-change runs on it anyway, and records that)")
    plan.rerun.data_changes = changed


def _packages(plan: RerunPlan, record: RunRecord) -> None:
    """A lock.json for a node setup to install, or this machine compared with what the run ran with."""
    node = record.node
    if node is None or not node.packages:
        plan.rerun.unchecked.append(f"packages: run {plan.rerun.run_id}'s node recorded none (it never started): "
                                    "the new node resolves its own")
        return
    if RESTORE.get(plan.backend) == "lock":
        plan.lock = {"packages": node.packages, "torch": node.torch.version, "from_run": plan.rerun.run_id}
        plan.rerun.lock = True
        plan.notes.append(f"lock.json: the node installs the {len(node.packages)} packages run {plan.rerun.run_id} "
                          f"resolved (torch {node.torch.version})")
        return
    from sdk.core.lockfile import installed_packages

    changes = package_changes(node.packages, installed_packages())
    plan.rerun.package_differences = changes
    plan.notes.append(package_line(changes, run_id=plan.rerun.run_id, count=len(node.packages)))


def package_line(changes: dict[str, dict[str, Any]], *, run_id: str, count: int) -> str:
    if not any(changes.values()):
        return f"packages: this machine has the {count} packages run {run_id} ran with"
    parts = [f"{n} {a} -> {b}" for n, (a, b) in changes["changed"].items()]
    parts += [f"+{n} {v}" for n, v in changes["added"].items()] + [f"-{n} {v}" for n, v in changes["removed"].items()]
    return (f"packages: this machine differs from run {run_id}'s record (a local rerun cannot reinstall it): "
            + ", ".join(parts))


def _backend(requested: str, source: Any, record: RunRecord, spec: Any) -> str:
    """The backend asked for; by default the run's own, unless the overrides moved it (resources)."""
    from sdk.backends import choose_backend

    if requested != "auto":
        return requested
    ran = record.client.backend if record.client else None
    same_place = choose_backend(source.spec(), "auto") == choose_backend(spec, "auto")
    return ran if ran and same_place else choose_backend(spec, "auto")


def plan_rerun(run: str, *, overrides: list[str] | None = None, allow_data_change: bool = False,
               backend: str = "auto") -> RerunPlan:
    """Check a finished run's record against now (data bytes; packages) and build the new run; nothing is launched.
    DataChanged names each changed file and both hashes (unless `allow_data_change`, which the record keeps)."""
    from sdk.runs import get_run

    source = get_run(run)
    record = _finished_record(source)
    spec = _spec(source, list(overrides or []))
    rerun = RerunOf(run_id=source.id, uri=source.uri, overrides=list(overrides or []),
                    allow_data_change=allow_data_change)
    plan = RerunPlan(source=source, spec=spec, backend=_backend(backend, source, record, spec), rerun=rerun,
                     recipe=record.client.recipe if record.client else None)
    _check_data(plan, record, allow=allow_data_change)
    _packages(plan, record)
    return plan


def rerun(run: str, *, overrides: list[str] | None = None, allow_data_change: bool = False,
          backend: str = "auto") -> Any:
    """`finetune rerun`: the run's spec again as a new run, once its data is checked unchanged; returns the Run.
    Its record says which run it reproduces and what was checked (`Run.record().client.rerun_of`)."""
    return plan_rerun(run, overrides=overrides, allow_data_change=allow_data_change, backend=backend).submit()
