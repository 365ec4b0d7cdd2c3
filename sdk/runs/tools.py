"""`sdk.evaluate` and `sdk.merge`: work on a run's model, done by node code in a subprocess.

The client never imports torch, so these run `python -m launch.tools.<tool>` (which needs the `train`
extra) and read its last stdout line as JSON. Exit code 2 is a user error with a clear message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from sdk.core.errors import FinetuneError, LaunchError


def require_succeeded(run: str, what: str) -> str:
    """merge, generate, eval and serve work on a trained model: a run that did not succeed has none to trust.
    Returns the run folder's URI, which is what the node's tools take (they never read this machine's registry)."""
    from sdk.runs import get_run

    handle = get_run(run)
    status = handle.status()
    if status.state != "succeeded":
        reason = f": {status.error}" if status.error else ""
        raise FinetuneError(f"run {run} is {status.state}{reason}; {what} needs a run that succeeded")
    return handle.uri


def _run_tool(module: str, args: list[str], what: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if result.returncode == 2:
        raise FinetuneError(result.stderr.strip().splitlines()[-1].removeprefix("error: "))
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise LaunchError(f"{what} failed:\n{tail}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def evaluate(run: str, *, data: str, text_field: str = "text", label_field: str = "label", limit: int | None = None) -> dict[str, Any]:
    """A run whose spec names eval.labels: label accuracy on a text + label file, {'base': {accuracy, correct,
    total}, 'tuned': {...}, 'labels': [...], 'rows': n}. Any other run: the generation metrics of the base and the
    tuned model on `data` in any supported format, {'base': {exact_match, ..., counts}, 'tuned': {...}, 'rows': n}."""
    from sdk.runs import get_run

    handle = get_run(run)
    if handle.status().state == "succeeded" and not handle.spec().eval.labels:
        result = compare([run], data=data, limit=limit)
        base, tuned = result["columns"]
        return {"run": tuned["name"], "data": data, "rows": result["rows"], "base": base["metrics"], "tuned": tuned["metrics"]}
    uri = require_succeeded(run, "eval")
    args = ["--run", uri, "--data", data, "--text-field", text_field, "--label-field", label_field]
    if limit:
        args += ["--limit", str(limit)]
    return _run_tool("launch.tools.eval_run", args, f"evaluation of {run}")


def merge(
    run: str, out: str | Path, *, dtype: str = "auto", prompts: int = 8, max_logit_diff: float | None = None, force: bool = False
) -> dict[str, Any]:
    """Write a standalone model (base + adapter merged) to `out`; returns the merge report with
    `max_logit_diff` against the adapter model (and `max_logit_diff_4bit_merge` for QLoRA).
    Nothing is written when the difference exceeds the tolerance."""
    uri = require_succeeded(run, "merge")
    args = ["--run", uri, "--out", str(out), "--dtype", dtype, "--prompts", str(prompts)]
    if max_logit_diff is not None:
        args += ["--max-logit-diff", str(max_logit_diff)]
    if force:
        args.append("--force")
    return _run_tool("launch.tools.merge", args, f"merge of {run}")


def generate(run: str, prompts: list[str], *, max_new_tokens: int | None = None, base: bool = False,
             raw: bool = False, tools: str | None = None) -> dict[str, Any]:
    """Greedy completions with transformers + peft, each prompt written in the run's training template
    (`raw`: as given; `tools`: a JSON file of the functions the prompts offer, each answer's calls parsed as the
    serving engine parses them). {'outputs': [{'prompt', 'rendered', 'text'[, 'tool_calls']}], 'template', 'model'}."""
    args = ["--run", require_succeeded(run, "generate")]
    if tools:
        from sdk.core.errors import SpecError
        from sdk.data.tools import load_tools_file

        try:
            load_tools_file(tools)  # a bad file is named here, before the model loads
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        args += ["--tools", str(Path(tools).expanduser().resolve())]
    for prompt in prompts:
        args += ["--prompt", prompt]
    if max_new_tokens:
        args += ["--max-new-tokens", str(max_new_tokens)]
    if base:
        args.append("--base")
    if raw:
        args.append("--raw")
    return _run_tool("launch.tools.generate", args, f"generation with {run}")


def compare(runs: list[str], *, data: str, limit: int | None = None, base: bool = True, html: str | Path | None = None,
            max_new_tokens: int | None = None) -> dict[str, Any]:
    """The base model and each run answer the same rows of `data` (any supported format), greedy; the answers and
    each column's generation metrics: {'prompts', 'references', 'columns': [{'name', 'answers', 'metrics'}]}.
    `html`: also write the side-by-side page there (sdk.evaluation.report)."""
    if not runs:
        raise FinetuneError("compare: name at least one run")
    args = [arg for run in runs for arg in ("--run", require_succeeded(run, "compare"))] + ["--data", str(data)]
    if not Path(data).expanduser().exists() and not data.startswith(("s3://", "builtin:")):
        raise FinetuneError(f"--data: {data}: no such file")
    if limit:
        args += ["--limit", str(limit)]
    if max_new_tokens:
        args += ["--max-new-tokens", str(max_new_tokens)]
    if not base:
        args.append("--no-base")
    result = _run_tool("launch.tools.compare", args, "comparison")
    if html is not None:
        from sdk.evaluation.report import comparison_html

        target = Path(html).expanduser()
        partial = target.with_name(f".{target.name}.part")  # a reader never sees half a page
        partial.write_text(comparison_html(result), encoding="utf-8")
        partial.replace(target)
    return result
