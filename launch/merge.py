"""Merge a run's adapter into a standalone model, and prove the merge did not change the model.

`python -m launch.merge --run RUN --out DIR [--dtype fp32|bf16|fp16] [--max-logit-diff X] [--force]`

QLoRA trained its adapter against the 4-bit (NF4) weights. Merging into those 4-bit weights
re-quantizes W + BA and rounds most of the update away; merging into the original 16-bit weights
adds the adapter to weights it never saw. The merge here dequantizes the NF4 weights to 16-bit and
adds the adapter to exactly those. The report gives the max logit difference against the adapter
model on eval prompts for the merge that was written and, for QLoRA, for the 4-bit merge too. The
output is written only when the difference is within tolerance, built in a scratch folder beside
`--out` and renamed into place complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# Soft prompts are extra input embeddings, not a change of any weight: nothing to merge into.
UNMERGEABLE = {"prompt_tuning", "prefix_tuning"}
DEFAULT_TOLERANCE = {"fp32": 1e-3, "bf16": 0.5, "fp16": 0.25}
FALLBACK_PROMPTS = ["The quick brown fox", "Write one sentence about the sea.", "### Instruction:\nSay hello.\n\n### Response:\n"]


def eval_prompts(spec: Any, tokenizer: Any, count: int) -> list[str]:
    """Prompts from the run's own eval data (what the adapter was trained for), else generic text."""
    from launch.data import prepare
    from launch.evaluate import prompt_text

    try:
        prepared = prepare(spec)
        examples = prepared.eval_examples or []
        prompts = [prompt_text(tokenizer, e.prompt) for e in examples[:count]]
    except Exception as exc:  # data gone or unreachable: the check still runs, on generic prompts
        print(f"[finetune] note: eval data unavailable ({exc}); using generic prompts", flush=True)
        prompts = []
    return prompts or FALLBACK_PROMPTS[:count]


def logits(model: Any, tokenizer: Any, prompts: list[str]) -> list[Any]:
    import torch

    device = next(p.device for p in model.parameters())
    model.eval()
    out = []
    with torch.no_grad():
        for prompt in prompts:  # one at a time: no padding to mask
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
            out.append(model(**ids).logits.float().cpu())
    return out


def max_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def merge(run: str, out: Path, *, dtype: str = "auto", num_prompts: int = 8, tolerance: float | None = None,
          force: bool = False) -> dict[str, Any]:
    import torch

    from launch.methods import get_method
    from launch.models import load_model, load_tokenizer, local_source
    from launch.node import _quiet_libraries
    from launch.train import compute_dtype, resolve_precision, weight_dtype
    from sdk.errors import FinetuneError
    from sdk.runs import get_run

    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not force:
        raise FinetuneError(f"{out}: exists and is not empty (pass --force to replace it)")
    handle = get_run(run)
    spec = handle.spec()
    name = spec.method.name
    if name in UNMERGEABLE:
        raise FinetuneError(
            f"method.name: {name} learns soft prompts, which are not weights of the base model and cannot be merged; "
            "load the adapter with PeftModel.from_pretrained instead"
        )
    _quiet_libraries()
    precision = resolve_precision(spec)
    if dtype == "auto":
        target = compute_dtype(spec, precision) if name == "qlora" else weight_dtype(spec, precision)
    else:
        target = getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype])
    dtype_name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[target]
    tolerance = DEFAULT_TOLERANCE[dtype_name] if tolerance is None else tolerance
    method = get_method(name)
    source = local_source(spec.model)
    tokenizer = load_tokenizer(spec.model, source)
    prompts = eval_prompts(spec, tokenizer, num_prompts)
    report: dict[str, Any] = {"run": handle.id, "method": name, "dtype": dtype_name, "prompts": len(prompts), "tolerance": tolerance}

    with tempfile.TemporaryDirectory(prefix="finetune-merge-") as tmp:
        artifact = handle.fetch_adapter(Path(tmp) / "adapter")
        if name == "qlora":
            quant = method.quantization_config(spec, target)

            def four_bit() -> Any:
                return load_model(spec.model, dtype=target, quantization_config=quant, source=source)

            reference = logits(method.reload(four_bit(), artifact), tokenizer, prompts)  # the model as trained
            merged_4bit = method.reload(four_bit(), artifact).merge_and_unload()
            report["max_logit_diff_4bit_merge"] = max_diff(logits(merged_4bit, tokenizer, prompts), reference)
            del merged_4bit
            dequantized = four_bit().dequantize(dtype=target)  # NF4 values, now in 16-bit
            merged = method.reload(dequantized, artifact).merge_and_unload()
            report["merged_into"] = f"dequantized {dtype_name} base (the NF4 weights the adapter was trained on)"
        else:
            def base() -> Any:
                return load_model(spec.model, dtype=target, source=source)

            reference = logits(method.reload(base(), artifact), tokenizer, prompts)
            merged = method.reload(base(), artifact)
            if hasattr(merged, "merge_and_unload"):
                merged = merged.merge_and_unload()
            report["merged_into"] = f"{dtype_name} base"
        report["max_logit_diff"] = max_diff(logits(merged, tokenizer, prompts), reference)
        if report["max_logit_diff"] > tolerance:
            raise FinetuneError(
                f"merge of {handle.id}: max logit difference {report['max_logit_diff']:.3g} against the adapter model "
                f"exceeds {tolerance:g}; nothing written (raise --max-logit-diff to accept it)"
            )
        merged = merged.to(target)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        try:
            merged.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / "merge_report.json").write_text(json.dumps(report, indent=2))
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    report["out"] = str(out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.merge", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run id or run folder URI")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-logit-diff", type=float)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)

    from sdk.errors import FinetuneError

    try:
        report = merge(args.run, args.out, dtype=args.dtype, num_prompts=args.prompts, tolerance=args.max_logit_diff,
                       force=args.force)
    except FinetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
