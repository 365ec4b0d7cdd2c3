"""`finetune diff RUN_A RUN_B`: two runs compared field by field — the spec, the data's hashes, the packages, the
hardware, the environment and the final metrics — listing exactly the fields whose values differ, nothing equal.

What is never a difference (IGNORED) is named, with why: labels, places and times differ between any two runs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from sdk.core.record import RunRecord, package_changes

IGNORED = {
    "spec.name": "a label: run ids are made from it (a sweep names each trial after its values)",
    "spec.output": "where the run folder lives, not what it trains",
    "record times (submitted, started), run ids, URIs and rerun_of": "every run has its own",
    "a node's earlier starts (record.node.previous)": "how it got there, not what it ran with",
    "summary: memory, generations' text, per-phase times other than train_s and total_s": "see finetune metrics",
}

GROUPS = ("spec", "data", "packages", "hardware", "environment", "metrics")

# The summary's final metrics compared (dotted paths into summary.json; a section compares every number in it).
METRICS = ("first_loss", "last_loss", "train_loss", "eval_loss", "steps", "train_rows", "eval_rows",
           "label_accuracy", "generation_metrics", "forgetting", "judge", "reward", "runtime_s.train_s",
           "runtime_s.total_s", "cost.estimate_usd", "cost.actual_usd", "cost.hourly_usd")

# What the hardware and environment groups compare, from the node's record (dotted paths into it).
HARDWARE = ("torch.version", "torch.cuda", "torch.cudnn", "torch.hip", "torch.gpus", "torch.gpu_count",
            "torch.capability", "torch.driver", "torch.torch_index", "world_size")
ENVIRONMENT = ("image.spec", "image.env", "image.container", "image.os", "image.cloud", "python", "platform",
               "product.version", "product.git_commit", "product.git_dirty")


class RunDiff(BaseModel):
    a: str
    b: str
    spec: dict[str, list[Any]] = Field(default_factory=dict)  # dotted path -> [a, b]
    data: dict[str, list[Any]] = Field(default_factory=dict)  # field and file -> [a's hash, b's hash]
    packages: dict[str, dict[str, Any]] = Field(default_factory=dict)  # added / removed / changed, from a to b
    hardware: dict[str, list[Any]] = Field(default_factory=dict)
    environment: dict[str, list[Any]] = Field(default_factory=dict)
    metrics: dict[str, list[Any]] = Field(default_factory=dict)
    compared: list[str] = Field(default_factory=lambda: list(GROUPS))  # the groups both runs let us compare
    not_compared: list[str] = Field(default_factory=list)  # "groups: not compared (why)": a missing record or summary
    ignored: dict[str, str] = Field(default_factory=lambda: dict(IGNORED))

    @property
    def same(self) -> bool:
        return not any((self.spec, self.data, self.packages, self.hardware, self.environment, self.metrics))

    def lines(self) -> list[str]:
        out = [f"{self.a} → {self.b}"]
        for group in ("spec", "data", "hardware", "environment", "metrics"):
            values = getattr(self, group)
            if values:
                out.append(group)
                out += [f"  {path}: {_show(x)} → {_show(y)}" for path, (x, y) in values.items()]
        if self.packages:
            out.append("packages")
            out += [f"  {name}: {x} → {y}" for name, (x, y) in self.packages.get("changed", {}).items()]
            out += [f"  +{name} {v}" for name, v in self.packages.get("added", {}).items()]
            out += [f"  -{name} {v}" for name, v in self.packages.get("removed", {}).items()]
        if self.same:
            out.append(f"no differences in {_words(self.compared)}")
        out += self.not_compared
        out.append("ignored (never a difference; --json says why): " + ", ".join(self.ignored))
        return out


def _words(groups: list[str]) -> str:
    named = [{"spec": "the spec", "metrics": "final metrics"}.get(g, g) for g in groups]
    return ", ".join(named[:-1]) + f" or {named[-1]}" if len(named) > 1 else "".join(named)


def _show(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths to leaves: mappings by key, lists of mappings by index (data.sources.0.weight, as --set names
    them); any other list is one value."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}.{i}"))
        return out
    return {prefix: value}


def differing(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[Any]]:
    """The paths whose values differ (one side missing counts as None), in a's order then b's."""
    return {path: [a.get(path), b.get(path)] for path in dict.fromkeys([*a, *b]) if a.get(path) != b.get(path)}


def _picked(flat: dict[str, Any], wanted: tuple[str, ...]) -> dict[str, Any]:
    return {path: v for path, v in flat.items() if any(path == w or path.startswith(f"{w}.") for w in wanted)}


def _spec(run: Any) -> dict[str, Any]:
    flat = flatten(run.spec().model_dump(mode="json"))
    return {path: v for path, v in flat.items() if f"spec.{path.split('.')[0]}" not in IGNORED}


def _files(record: RunRecord) -> dict[str, Any]:
    """Each file's bytes: sha256, else an S3 object's VersionId or ETag (the node never read it)."""
    out: dict[str, Any] = {}
    for item in record.data_files():
        name = item.path if item.path and item.path != item.source else ""
        out[f"{item.field} {item.source}{' ' + name if name else ''}"] = (
            item.sha256 or item.version_id or item.etag or item.kind)
    out.update({item.field: item.sha256 for item in (record.client.files if record.client else [])})
    return out


def _rows(summary: Any) -> dict[str, Any]:
    return {f"{s.field} {s.source} rows": s.sha256 for s in summary.data_sources}


def _node(record: RunRecord, wanted: tuple[str, ...]) -> dict[str, Any]:
    assert record.node is not None
    return _picked(flatten(record.node.model_dump(mode="json", exclude={"previous", "packages", "data"})), wanted)


def _hardware_of(summary: Any) -> dict[str, Any]:
    """A run without a node record: the hardware its summary names."""
    hw = summary.hardware
    return {"torch.version": hw.torch, "torch.cuda": hw.cuda, "torch.gpus": hw.name, "torch.gpu_count": hw.count,
            "torch.driver": hw.driver, "torch.capability": hw.capability, "world_size": summary.world_size}


class _Side:
    def __init__(self, run: Any):
        self.run, self.record, self.summary = run, run.record(), run.summary()
        self.node = self.record.node if self.record is not None else None

    def missing(self, compared: list[str]) -> list[str]:
        """One line per thing this side lacks: the groups that kept them from being compared, and why."""
        lacks = []
        if self.record is None:
            lacks.append((("data files", "packages", "hardware", "environment"),
                          "has no record: launched before records"))
        elif self.node is None:
            lacks.append((("packages", "hardware", "environment"), "has no node record: its node never started"))
        if self.summary is None:
            lacks.append((("data", "hardware", "metrics"), "has no summary: it did not finish"))
        out = []
        for groups, why in lacks:
            shown = [("data files" if "data rows" in compared else "data") if g == "data files" else g
                     for g in groups if g == "data files" or not {g, f"{g} rows"} & set(compared)]
            out.append(f"{', '.join(shown)}: not compared ({self.run.id} {why})")
        return out


def diff_runs(run_a: str, run_b: str) -> RunDiff:
    """Compare two runs (ids or run folder URIs) from their stores: spec, data, packages, hardware, metrics.
    A group is compared only where both runs know it; what was left out is named in `not_compared`."""
    from sdk.runs import get_run

    a, b = _Side(get_run(run_a)), _Side(get_run(run_b))
    records, nodes, summaries = a.record and b.record, a.node and b.node, a.summary and b.summary
    known = {"data": records or summaries, "packages": nodes, "environment": nodes, "hardware": nodes or summaries,
             "metrics": summaries}
    compared = ["data rows" if g == "data" and not records else g for g in GROUPS if known.get(g, True)]
    out = RunDiff(a=a.run.id, b=b.run.id, spec=differing(_spec(a.run), _spec(b.run)), compared=compared,
                  not_compared=a.missing(compared) + b.missing(compared))
    data = {**(_files(a.record) if records else {}), **(_rows(a.summary) if summaries else {})}, \
        {**(_files(b.record) if records else {}), **(_rows(b.summary) if summaries else {})}
    out.data = differing(*data)
    if nodes:
        out.hardware = differing(_node(a.record, HARDWARE), _node(b.record, HARDWARE))
        out.environment = differing(_node(a.record, ENVIRONMENT), _node(b.record, ENVIRONMENT))
        out.packages = {k: v for k, v in package_changes(a.node.packages, b.node.packages).items() if v}
    elif summaries:
        out.hardware = differing(_hardware_of(a.summary), _hardware_of(b.summary))
    if summaries:
        out.metrics = differing(*(_picked(flatten(s.summary.model_dump(mode="json")), METRICS) for s in (a, b)))
    return out
