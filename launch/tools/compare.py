"""`python -m launch.tools.compare --run RUN [--run RUN ...] --data FILE [--limit N] [--no-base]`: the same held-out
prompts answered by the base model and by each run's model (greedy, transformers + peft), each prompt written the
way that run trained (its summary's template, its chat_template.jinja for tool calls), and the generation metrics
of each column against the rows' references (sdk.evaluation.metrics). One JSON object on stdout.

The runs must share one base model: the base is loaded once and each run's adapter put on a fresh copy."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def examples_for(spec: Any, template: str | None, data: str, limit: int | None) -> list[Any]:
    """The file's rows (any supported format) as evaluation examples, written in `template` (a run's resolved one)."""
    from sdk.data.rendering import Renderer
    from sdk.data.rows import DataError
    from sdk.data.samples import load_samples

    # the run's field mapping and system prompt (its first source's, when it had several); the file's own format
    first = spec.data.parts()[0].data
    chosen = {"template": template} if template in ("instruction", "chat", "plain") else {}
    mapped = spec.model_copy(update={"data": first.model_copy(update={
        "source": data, "sources": [], "eval_source": None, "format": "auto", "file_type": "auto", **chosen})})
    check = load_samples(mapped, data, "--data", any_objective=True)
    if check.bad:
        raise DataError(check.error())
    renderer = Renderer(mapped, chat_template=template == "chat")
    examples = [renderer.example(s) for s in check.samples if s.kind != "text"]
    if not examples:
        raise DataError(f"--data: {data} has no rows with a prompt and a reference answer (plain text rows have none)")
    return examples[:limit] if limit else examples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.tools.compare")
    parser.add_argument("--run", action="append", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--no-base", action="store_true", help="leave the base model's column out")
    args = parser.parse_args(argv)

    from sdk.core.errors import FinetuneError

    try:
        from sdk.store.runfolder import CHAT_TEMPLATE, RunFolder

        runs = [RunFolder.open(uri) for uri in args.run]
        specs = [run.spec() for run in runs]
        for run, spec in zip(runs[1:], specs[1:], strict=True):
            if spec.model.model_dump() != specs[0].model.model_dump():
                raise ValueError(f"{run.run_id} has another base model ({spec.model.id}, not {specs[0].model.id}): "
                                 "compare runs of one base model")
        summaries = [run.summary() for run in runs]
        examples = [examples_for(spec, s.template if s else None, args.data, args.limit) for spec, s in zip(specs, summaries, strict=True)]
        from launch.runtime import quiet_libraries

        quiet_libraries()
        from launch.evaluate import answer_all, scored, shown_prompt
        from launch.models import BaseLoader
        from sdk.core.precision import parse_precision

        loader = BaseLoader.for_spec(specs[0], parse_precision("fp32", option="--dtype", allow_auto=False))
        tokenizer = loader.tokenizer()
        own_template = tokenizer.chat_template
        new_tokens = args.max_new_tokens or max(s.eval.max_new_tokens for s in specs)
        columns = []
        if not args.no_base:  # prompted as the first run trained
            outputs = answer_all(loader.load(), tokenizer, examples[0], max_new_tokens=new_tokens)
            columns.append(("base", outputs, scored(examples[0], outputs, labels=None, metrics=True)))
        for run, summary, rows in zip(runs, summaries, examples, strict=True):
            tokenizer.chat_template = run.read_text(CHAT_TEMPLATE) or own_template
            with tempfile.TemporaryDirectory() as tmp:
                model = loader.builder.reload(loader.load(), run.fetch_adapter(Path(tmp) / "adapter"))
                outputs = answer_all(model, tokenizer, rows, max_new_tokens=new_tokens)
            parser_name = summary.tool_calling.parser if summary and summary.tool_calling else "hermes"
            columns.append((run.run_id, outputs, scored(rows, outputs, labels=None, metrics=True, tool_parser=parser_name)))
    except (FinetuneError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    first = examples[0]
    print(json.dumps({
        "data": args.data, "rows": len(first), "max_new_tokens": new_tokens,
        "prompts": [shown_prompt(e.prompt) for e in first], "references": [e.response or _calls(e.calls) for e in first],
        "columns": [{"name": name, "answers": outputs, "metrics": result.metrics.as_dict() if result.metrics else {}}
                    for name, outputs, result in columns]}))
    return 0


def _calls(calls: list[dict[str, Any]] | None) -> str:
    return "; ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in calls or [])


if __name__ == "__main__":
    sys.exit(main())
