"""`python -m launch.tools.generate --run RUN --prompt TEXT [--prompt ...] [--base] [--max-new-tokens N] [--tools FILE]`:
greedy completions with transformers + peft, each prompt written in the run's own training template (the summary's
`template`; a tool-calling run's chat_template.jinja), one prompt at a time (no padding to perturb the numbers).
With --tools the prompts offer those functions, and each answer's tool calls are parsed as the serving engine
parses them. One JSON object on stdout."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def offered_tools(args: argparse.Namespace, template: str | None) -> list | None:
    """The functions of --tools, checked; only a chat-template run can be offered them."""
    if not args.tools:
        return None
    from sdk.data.tools import load_tools_file

    tools = load_tools_file(args.tools)
    if template != "chat" or args.raw:
        raise ValueError(f"--tools: the run's prompts are written in the {template} template"
                         f"{' and --raw sends them as given' if args.raw else ''}; functions are offered only "
                         "through a chat template (a run trained on chat or tool-calling rows)")
    return tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.tools.generate")
    parser.add_argument("--run", required=True)
    parser.add_argument("--prompt", action="append", required=True)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--base", action="store_true", help="the base model (adapter off)")
    parser.add_argument("--raw", action="store_true", help="send the prompt as written, without the run's template")
    parser.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 (or float32, bfloat16, float16)")
    parser.add_argument("--tools", help="a JSON file of the functions the prompts offer (OpenAI's tools list)")
    args = parser.parse_args(argv)

    from sdk.core.errors import FinetuneError

    try:
        from sdk.data.rendering import user_prompt
        from sdk.data.tools import parse_hermes_calls
        from sdk.store.runfolder import CHAT_TEMPLATE, RunFolder

        run = RunFolder.open(args.run)
        spec = run.spec()
        summary = run.summary()
        template = summary.template if summary else None
        tools = offered_tools(args, template)
        trained_template = run.read_text(CHAT_TEMPLATE)
        trained_tools = summary.tool_calling if summary else None
        hermes = trained_tools is None or trained_tools.parser == "hermes"  # what the engine would parse calls with
        instruction = summary.instruction if summary else None
        prompts = [p if args.raw else user_prompt(spec, template, p, instruction=instruction) for p in args.prompt]
        from launch.runtime import quiet_libraries

        quiet_libraries()
        from launch.evaluate import generate, prompt_text
        from launch.models import BaseLoader
        from sdk.core.precision import parse_precision

        precision = parse_precision(args.dtype, option="--dtype", allow_auto=False)
        loader = BaseLoader.for_spec(spec, precision)
        tokenizer = loader.tokenizer()
        model = loader.load()
        if trained_template:  # the run trained on tools through this template: render as it did (and as serve does)
            tokenizer.chat_template = trained_template
        elif tools:
            from sdk.data.tools import tool_template

            tokenizer.chat_template = tool_template(tokenizer.chat_template, model.config.model_type).source
        if not args.base:
            with tempfile.TemporaryDirectory() as tmp:
                model = loader.builder.reload(model, run.fetch_adapter(Path(tmp) / "adapter"))
        new_tokens = args.max_new_tokens or spec.eval.max_new_tokens
        texts = [generate(model, tokenizer, [p], max_new_tokens=new_tokens, batch_size=1, tools=tools)[0] for p in prompts]
    except (FinetuneError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"run": run.run_id, "model": "base" if args.base else run.run_id, "template": template,
                      "max_new_tokens": new_tokens,
                      "outputs": [{"prompt": p, "rendered": prompt_text(tokenizer, r, tools), "text": t,
                                   **({"tool_calls": parse_hermes_calls(t)[1]} if tools and hermes else {})}
                                  for p, r, t in zip(args.prompt, prompts, texts, strict=True)]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
