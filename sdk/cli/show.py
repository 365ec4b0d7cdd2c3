"""How the CLI prints what the SDK returns: summaries, the cloud dry-run plan, a sweep's leaderboard."""

from __future__ import annotations

import sys

from sdk.cli.app import _console


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _features(summary) -> str:
    f = summary.features
    on = [name for name, value in (("padding-free packing", f.packing), ("gradient checkpointing", f.gradient_checkpointing),
                                   ("activation offloading", f.activation_offloading), ("Liger kernels", f.liger_kernels),
                                   ("torch.compile", f.compile)) if value]
    unpacked = ["padded, not packed: " + f.packing_note.partition(": ")[2]] if f.packing_note else []
    return ", ".join([f"{summary.attention or 'default'} attention", *on, *([f.optimizer] if f.optimizer else []), *unpacked])


def _print_summary(summary) -> None:
    """A RunSummary as a two-column table, then the side-by-side generations."""
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    hw = summary.hardware
    device = f"{hw.count}× {hw.name}" if hw.name else hw.device
    steps = str(summary.steps)
    if summary.first_loss is not None and summary.last_loss is not None:
        steps += f", loss {summary.first_loss:.4f} → {summary.last_loss:.4f}"
    rows = [
        ("model", f"{summary.model} ({summary.method}, {summary.objective}, {summary.precision}, {device})"),
        ("trainable", f"{summary.trainable_params:,} of {summary.total_params:,} ({summary.trainable_percent:.3f}%)"),
        ("steps", steps),
        ("eval loss", f"{summary.eval_loss:.4f}" if summary.eval_loss is not None else "-"),
        ("trained with", _features(summary)),
        ("memory", f"resident {_fmt_bytes(summary.resident_memory_bytes)}, peak {_fmt_bytes(summary.peak_memory_bytes)} "
                   f"({summary.peak_memory_kind})"),
        ("adapter", _fmt_bytes(summary.adapter_bytes)),
        ("runtime", ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in summary.runtime_s.model_dump().items()
                              if v is not None)),
    ]
    if summary.cost is not None:
        rows.append(("cost", summary.cost.line()))
    acc = summary.label_accuracy
    if acc.before and acc.after:
        rows.append(("label accuracy", f"{acc.before.accuracy:.1%} → {acc.after.accuracy:.1%} "
                                       f"({acc.after.correct}/{acc.after.total} held-out)"))
    gen = summary.generation_metrics
    if gen.after:
        before = gen.before.means if gen.before else {}
        shown = [f"{k.replace('_', ' ')} " + (f"{before[k]:.3f} → " if k in before else "") + f"{v:.3f}"
                 for k, v in gen.after.means.items()]
        rows.append(("generation", f"{', '.join(shown)} ({max(gen.after.counts.values())} held-out)"))
    if summary.judge and summary.judge.win_rate is not None:
        j = summary.judge
        rows.append(("judge", f"{j.model}: win rate {j.win_rate:.2f} over {j.n} prompts ({j.wins} won, {j.losses} lost, "
                              f"{j.ties} tied, both orders asked)"))
    reward = summary.reward
    if reward is not None and reward.after is not None:
        before = f"{reward.before.mean:.3f} → " if reward.before else ""
        each = ", ".join(f"{k} {v:.3f}" for k, v in reward.after.means.items())
        rows.append(("held-out reward", f"{before}{reward.after.mean:.3f} over {reward.after.n} prompts ({each})"))
    forgot = summary.forgetting
    if forgot and forgot.ratio is not None:
        rows.append(("forgetting", f"general-text loss {forgot.before_loss:.3f} → {forgot.after_loss:.3f} (×{forgot.ratio:.3f})"))
    for key, value in rows:
        table.add_row(f"[bold]{key}[/bold]", value)
    _console().print(table)
    for gen in summary.generations:
        _console().print(f"  expected [green]{gen.expected!r}[/green]  base {gen.base!r}  tuned {gen.tuned!r}", markup=True)


def _print_dry_run(spec, backend: str) -> None:
    """What the backend says a launch would do; provisions nothing."""
    from sdk.backends import get_backend

    plan = get_backend(backend).dry_run(spec)
    for line in plan.lines:
        _console().print(line, markup=False, highlight=False)
    if plan.task_yaml:
        sys.stdout.write("---\n" + plan.task_yaml)
    else:
        _console().print_json(spec.to_json())


def _print_sweep(handle, *, json_out: bool = False) -> None:
    from rich.table import Table

    from sdk.sweeps.spend import spent_usd

    record = handle.record()
    status = handle.status()
    rows = handle.leaderboard(as_frame=False)
    if json_out:
        import json

        sys.stdout.write(json.dumps({"sweep": record.sweep_id, "state": status.state, "driver": status.driver,
                                     "spent_usd": spent_usd(record), "budget": record.budget, "metric": record.metric,
                                     "leaderboard": [r.model_dump(mode="json") for r in rows]}) + "\n")
        return
    console = _console()
    cost = f", estimated ${record.estimate_usd:,.2f}" if record.estimate_usd else ""
    cost += f", spent ${spent_usd(record):,.2f}" if any(t.cost_usd is not None for t in record.trials) else ""
    cost += f" of a ${record.budget:,.2f} budget" if record.budget is not None else ""
    cost += " (OVER BUDGET)" if record.budget is not None and spent_usd(record) > record.budget else ""
    console.print(f"{record.sweep_id}: {status.state} ({', '.join(f'{n} {st}' for st, n in status.counts.items())}); "
                  f"{len(record.trials)} trials on {record.backend}, {record.max_parallel} at a time{cost}; "
                  f"ranked by {record.metric} ({record.goal})", markup=False)
    if status.note:
        console.print(f"note: {status.note}", markup=False)
    keys = list(record.grid)
    table = Table(box=None, pad_edge=False)
    for column in ("#", "trial", *[k.rsplit(".", 1)[-1] for k in keys], "state", record.metric.replace("_", " "),
                   "eval loss", "cost", "error"):
        table.add_column(column, no_wrap=column == "trial", overflow="fold")
    for r in rows:
        metric = "-" if r.metric is None else f"{r.metric:.4g}"
        eval_loss = "-" if r.eval_loss is None else f"{r.eval_loss:.4f}"
        usd = "-" if r.cost_usd is None else f"${r.cost_usd:,.2f}"
        table.add_row(str(r.rank or "-"), r.trial, *[str(r.values.get(k)) for k in keys], r.state, metric, eval_loss,
                      usd,
                      r.error if r.error and r.state != "succeeded" else "")
    console.print(table)
    if rows and rows[0].metric is not None:
        console.print(f"best: {rows[0].trial} (run {rows[0].run_id}); its adapter: finetune fetch {rows[0].run_id} ./adapter",
                      markup=False)
