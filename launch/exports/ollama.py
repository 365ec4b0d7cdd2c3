"""Ollama: the GGUF export (merged, or the base's GGUF plus the GGUF LoRA for --adapter-only) and a Modelfile
whose TEMPLATE writes a conversation in the run's training format (sdk.data.chat_format: the template's family,
rendered the same by Ollama's Go templates and by the chat template), stops at the end-of-turn tokens and carries
the run's system prompt. The GGUFs are checked in llama.cpp, the runtime Ollama embeds; Ollama itself is not run."""

from __future__ import annotations

from typing import Any

from launch.exports import ExportContext

MODELFILE = "Modelfile"


def build(ctx: ExportContext) -> dict[str, Any]:
    from launch.exports.gguf import build as build_gguf
    from sdk.core.errors import FinetuneError
    from sdk.data.chat_format import modelfile, ollama_template

    tools = bool(ctx.summary and ctx.summary.tool_calling)
    try:  # the template and the Modelfile's values refused before any weight is converted
        chat = ollama_template(ctx.chat_template, bos_token=ctx.tokenizer.bos_token, eos_token=ctx.tokenizer.eos_token,
                               tools=tools)
        # the run's system prompt is in its format only where the format writes a system message (chat)
        system = ctx.spec.data.system_prompt if chat.system else None
        modelfile(gguf="./model.gguf", adapter="./lora.gguf" if ctx.options.adapter_only else None, chat=chat,
                  system=system)
    except ValueError as exc:
        raise FinetuneError(f"ollama: {exc}") from None
    files = build_gguf(ctx)
    quant = ctx.options.quants[0]
    if len(ctx.options.quants) > 1:
        ctx.say(f"the Modelfile names the {quant} file (the first --quant); edit FROM for the others")
    text = modelfile(gguf=f"./{files['model'][quant]}", adapter=f"./{files['adapter']}" if files["adapter"] else None,
                     chat=chat, system=system)
    (ctx.out / MODELFILE).write_text(text, encoding="utf-8")
    ctx.report["ollama"] = {"family": chat.family, "stops": chat.stops,
                            "create": f"ollama create {ctx.spec.name or ctx.run.run_id} -f {MODELFILE}"}
    return {**files, "modelfile": MODELFILE}
