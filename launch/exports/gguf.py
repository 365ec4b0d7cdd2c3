"""GGUF for llama.cpp (and Ollama, LM Studio): the adapter merged into its dequantized 16-bit base (as `finetune
merge` does, checked against the adapter's logits) and converted, one file per requested type; or, with
--adapter-only, the LoRA adapter as a GGUF LoRA beside the base's GGUF, which llama.cpp applies at load. The run's
own chat format (its training template) goes into the GGUF's tokenizer.chat_template, its special tokens with it.
Each file is loaded by llama.cpp and answers the held-out rows before the export counts (launch.exports.check)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from launch.exports import ExportContext


def build(ctx: ExportContext) -> dict[str, Any]:
    preflight(ctx)
    ctx.reference  # noqa: B018  the held-out rows answered first: a run without enough is refused before converting
    files = build_files(ctx)
    ctx.report["check"] = check_files(ctx, files)
    return files


def preflight(ctx: ExportContext) -> None:
    """What refuses the export before any weight is read: llama.cpp missing, an architecture its converter lacks."""
    from transformers import AutoConfig

    from launch.exports import llamacpp
    from sdk.core.errors import FinetuneError

    llamacpp.require_runtime()
    source = ctx.loader.source
    config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file, revision=source.revision)
    folder = ctx.work / "base-config"
    config.save_pretrained(folder)
    refusal = llamacpp.architecture_refusal(folder)
    if refusal:
        raise FinetuneError(refusal)


def build_files(ctx: ExportContext) -> dict[str, Any]:
    """The GGUF files in ctx.out: {'model': {quant: name}, 'adapter': name | None, 'chat_template': text}."""
    from launch.exports import llamacpp

    ctx.report["llama_cpp"] = llamacpp.VERSION
    stem = ctx.spec.name or ctx.run.run_id
    if ctx.options.adapter_only:
        base = ctx.base_folder()
        adapter = ctx.run.fetch_adapter(ctx.work / "adapter")
        lora = ctx.out / f"{stem}-lora-f16.gguf"
        llamacpp.convert("convert_lora_to_gguf.py", ["--base", str(base), "--outtype", "f16", "--outfile", str(lora),
                                                     str(adapter)])
        model = convert_model(ctx, base, f"{stem}-base")
        return {"model": model, "adapter": lora.name, "chat_template": ctx.chat_template}
    return {"model": convert_model(ctx, ctx.merged_folder(), stem), "adapter": None, "chat_template": ctx.chat_template}


def convert_model(ctx: ExportContext, folder: Path, stem: str) -> dict[str, str]:
    """One GGUF per requested type: the converter writes f32/f16/bf16/q8_0 itself, the quantizer the rest from f16."""
    from launch.exports import llamacpp
    from sdk.core.exports import CONVERTER_TYPES

    set_chat_template(folder, ctx.chat_template)
    byte_level_vocab(folder)
    names: dict[str, str] = {}
    for quant in ctx.options.quants:
        target = ctx.out / f"{stem}-{quant}.gguf"
        if quant in CONVERTER_TYPES:
            llamacpp.convert("convert_hf_to_gguf.py", [str(folder), "--outtype", quant, "--outfile", str(target)])
        else:
            source = ctx.work / f"{stem}-f16.gguf"
            if not source.exists():
                llamacpp.convert("convert_hf_to_gguf.py", [str(folder), "--outtype", "f16", "--outfile", str(source)])
            llamacpp.quantize(source, target, quant)
        ctx.say(f"{target.name}: {target.stat().st_size / 2**20:.1f} MiB")
        names[quant] = target.name
    return names


def set_chat_template(folder: Path, template: str | None) -> None:
    """The converter reads tokenizer_config.json's chat_template before chat_template.jinja: the run's template is
    written to the file and the key dropped, so the GGUF carries the format the run trained in."""
    if template is None:
        return
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.pop("chat_template", None) is not None:
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def byte_level_vocab(folder: Path) -> None:
    """A byte-level BPE tokenizer (GPT-2 style: every byte is a token already) that says it falls back to bytes
    and decodes like SentencePiece is what transformers writes when it reads a GGUF's gpt2 vocabulary; llama.cpp's
    converter takes such a file for a Llama SentencePiece vocabulary and writes a GGUF that crashes at its first
    quantization. Byte fallback never fires behind a byte-level pre-tokenizer, so the file is written as what it
    is: byte-level BPE, decoded byte-level (the converter then finds the model's own pre-tokenizer)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    model, pre = tokenizer.get("model") or {}, tokenizer.get("pre_tokenizer") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback") and pre.get("type") == "ByteLevel":
        model["byte_fallback"] = False
        tokenizer["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        path.write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")


def check_files(ctx: ExportContext, files: dict[str, Any]) -> dict[str, Any]:
    """Each GGUF (with the LoRA applied, for --adapter-only) answers the held-out rows; a file beyond the tolerance
    fails the export. The chat template is read back from each file's metadata."""
    from launch.exports.check import check_file

    ref = ctx.reference
    lora = ctx.out / files["adapter"] if files["adapter"] else None
    results = {}
    for quant, name in files["model"].items():
        result = check_file(ref, ctx.spec, ctx.out / name, tolerance=ctx.options.tolerance, lora=lora)
        result["chat_template_carried"] = read_chat_template(ctx.out / name) == files["chat_template"]
        results[quant] = result
        ctx.say(f"{name}{' + ' + lora.name if lora else ''}: {ref.metric} {result['llama_cpp']:.3f} in llama.cpp vs "
                f"{result['transformers']:.3f} in transformers ({result['difference_points']:+.1f} points), "
                f"first tokens agree on {result['first_token_agreement']:.0%}")
    return {"tolerance_points": ctx.options.tolerance, "files": results,
            "passed": all(r["passed"] and r["chat_template_carried"] for r in results.values())}


def read_chat_template(path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    return None if field is None else bytes(field.parts[field.data[0]]).decode("utf-8")
