"""Commands that use a finished run's model (node code in a subprocess): generate, eval, compare, merge."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from sdk.cli.app import (
    _console,
    app,
    escape_markup,
)


@app.command()
def generate(
    run: str = typer.Argument(...),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="a prompt (repeat for several); written in the run's training template"),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="default: the run's eval.max_new_tokens"),
    base: bool = typer.Option(False, "--base", help="the base model, adapter off"),
    raw: bool = typer.Option(False, "--raw", help="send the prompt as written, without the run's template"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object: rendered prompts and outputs"),
    tools: Path | None = typer.Option(None, "--tools", help="a JSON file of the functions the prompts offer (OpenAI's "
                                      "tools list); each answer's tool calls are parsed as `finetune serve` parses them"),
) -> None:
    """Greedy completions from a run's model with transformers + peft: a quick try without a server."""
    import json

    from sdk.runs import get_run
    from sdk.runs.tools import generate as generate_with

    result = generate_with(get_run(run).uri, prompt, max_new_tokens=max_new_tokens, base=base, raw=raw,
                           tools=str(tools) if tools else None)
    if as_json:
        print(json.dumps(result))
        return
    for item in result["outputs"]:
        calls = "; ".join(f"{c['name']}({c['arguments']})" for c in item.get("tool_calls") or [])
        answer = f"tool call: {calls}" if calls else item["text"]
        _console().print(f"[bold]{escape_markup(item['prompt'])}[/bold] → {escape_markup(answer)}", markup=True)


@app.command()
def compare(
    runs: list[str] = typer.Argument(..., help="runs of one base model (ids or run-folder URIs)"),
    data: str = typer.Option(..., "--data", help="held-out rows in any supported format, with reference answers"),
    html: Path | None = typer.Option(None, "--html", help="also write a side-by-side page: prompt, reference, every answer"),
    limit: int | None = typer.Option(None, "--limit", help="at most this many rows"),
    no_base: bool = typer.Option(False, "--no-base", help="leave the base model's column out"),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="default: the runs' largest eval.max_new_tokens"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The base and each run answer the same rows, greedy: generation metrics per column, answers side by side."""
    import json

    from rich.table import Table

    from sdk.runs.tools import compare as compare_runs

    result = compare_runs(runs, data=data, limit=limit, base=not no_base, html=html, max_new_tokens=max_new_tokens)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    names = sorted({k for c in result["columns"] for k in c["metrics"] if k != "counts"},
                   key=lambda k: ("exact_match", "token_f1", "rouge_l", "json_valid", "json_field_accuracy", "tool_call_match").index(k))
    table = Table(title=f"{result['rows']} rows of {data}")
    for header in ("model", *names):
        table.add_column(header.replace("_", " "))
    for column in result["columns"]:
        table.add_row(escape_markup(column["name"]), *[f"{column['metrics'].get(n, float('nan')):.3f}" for n in names])
    _console().print(table)
    if html:
        _console().print(f"side by side: {html}")


@app.command(name="eval")
def eval_command(
    run: str = typer.Argument(...),
    data: str = typer.Option(..., "--data", help="a run with eval.labels: text + label rows (label accuracy); any other: "
                                                "rows in any supported format with reference answers (generation metrics)"),
    text_field: str = typer.Option("text", "--text-field"),
    label_field: str = typer.Option("label", "--label-field"),
    limit: int | None = typer.Option(None, "--limit", help="score at most this many rows"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Base vs tuned on a file you bring: label accuracy for a classifier, generation metrics for any other run."""
    import json

    from sdk.runs.tools import evaluate

    result = evaluate(run, data=data, text_field=text_field, label_field=label_field, limit=limit)
    if json_out:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    b, t = result["base"], result["tuned"]
    if "accuracy" not in t:  # generation metrics (a run without eval.labels)
        shown = [f"{k.replace('_', ' ')} {b.get(k, float('nan')):.3f} → {v:.3f}" for k, v in t.items() if k != "counts"]
        _console().print(f"{result['rows']} rows of {data}, base → tuned: " + ", ".join(shown))
        return
    _console().print(f"{result['rows']} rows of {data}: base {b['accuracy']:.1%} ({b['correct']}/{b['total']}) → "
                     f"tuned {t['accuracy']:.1%} ({t['correct']}/{t['total']})")


@app.command()
def merge(
    run: str = typer.Argument(...),
    out: Path = typer.Argument(..., help="output directory for the standalone model (must be empty unless --force)"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (the run's compute dtype), fp32, bf16 or fp16"),
    prompts: int = typer.Option(8, "--prompts", help="eval prompts the merged logits are checked on"),
    max_logit_diff: float | None = typer.Option(None, "--max-logit-diff", help="tolerance (default by dtype)"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty output directory"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Merge the adapter into its base and write a standalone model, checked against the adapter's logits.
    QLoRA merges into the dequantized 16-bit base, never into the 4-bit weights."""
    import json

    from sdk.core.errors import SpecError
    from sdk.core.precision import parse_precision
    from sdk.runs.tools import merge as merge_run

    try:
        dtype = parse_precision(dtype, option="--dtype")
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    report = merge_run(run, out, dtype=dtype, prompts=prompts, max_logit_diff=max_logit_diff, force=force)
    if json_out:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    line = f"merged {report['method']} into the {report['merged_into']}: max logit diff vs adapter {report['max_logit_diff']:.3g}"
    if "max_logit_diff_4bit_merge" in report:
        line += f" (merging into the 4-bit base would give {report['max_logit_diff_4bit_merge']:.3g})"
    _console().print(f"{line}\nmodel → {report['out']}")
