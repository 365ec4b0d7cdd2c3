"""Merge a run's adapter into a standalone model, and prove the merge did not change the model.

`python -m launch.tools.merge --run RUN --out DIR [--dtype fp32|bf16|fp16] [--max-logit-diff X] [--force]`

QLoRA trained its adapter against the 4-bit (NF4) weights. Merging into those 4-bit weights
re-quantizes W + BA and rounds most of the update away; merging into the original 16-bit weights
adds the adapter to weights it never saw. The merge here dequantizes the NF4 weights to 16-bit and
adds the adapter to exactly those. The report gives the max logit difference against the adapter
model on eval prompts for the merge that was written and, for QLoRA, for the 4-bit merge too. An 8-bit
(LLM.int8) base is dequantized the same way, but its forward also quantizes activations, so its merge is
checked against the adapter on the dequantized weights and the int8 model's drift is reported beside. The
output is written only when the difference is within tolerance, built in a scratch folder beside
`--out` and renamed into place complete.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from sdk.core.precision import torch_dtype

# Default tolerance, relative to the largest logit the adapter model gives on the prompts: rounding the
# merged weights to the target dtype moves logits in proportion to their size (bf16 keeps 8 bits of
# mantissa: the tiny model measured 4% in bf16, 0.6% in fp16; a merge into the 4-bit weights, 54%).
RELATIVE_TOLERANCE = {"fp32": 1e-4, "bf16": 0.1, "fp16": 0.02}
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


def logit_scale(a: list[Any]) -> float:
    return max(float(x.abs().max()) for x in a)


def top1_agreement(a: list[Any], b: list[Any]) -> float:
    """Share of positions where both models would pick the same next token."""
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b, strict=True))
    return same / sum(x.shape[0] * x.shape[1] for x in a)


def merge(run: str, out: Path, *, dtype: str = "auto", num_prompts: int = 8, tolerance: float | None = None,
          force: bool = False) -> dict[str, Any]:
    from launch.hardware import capability
    from launch.models import BaseLoader
    from launch.runtime import quiet_libraries
    from sdk.core.errors import FinetuneError
    from sdk.core.methods import method_of
    from sdk.core.precision import DTYPE_OF, PRECISION_OF, compute_dtype, resolve_precision, weight_dtype
    from sdk.store.runfolder import RunFolder

    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not force:
        raise FinetuneError(f"{out}: exists and is not empty (pass --force to replace it)")
    if force:
        from sdk.store import check_replaceable

        check_replaceable(out)
    run_folder = RunFolder.open(run)
    spec = run_folder.spec()
    method = method_of(spec)
    if method.merge == "none":
        raise FinetuneError(f"method.name: {method.name} {method.merge_refusal}")
    quiet_libraries()
    precision = resolve_precision(spec.train.precision, capability=capability())
    if dtype != "auto":
        target = DTYPE_OF[dtype]
    elif method.quantized_base:  # the dequantized weights in the dtype the 4-bit base computed in
        target = compute_dtype(spec, precision)
    else:
        target = weight_dtype(spec, precision)
    dtype_name = PRECISION_OF[target]
    loader = BaseLoader.for_spec(spec, precision)
    builder = loader.builder
    tokenizer = loader.tokenizer()
    prompts = eval_prompts(spec, tokenizer, num_prompts)
    report: dict[str, Any] = {"run": run_folder.run_id, "method": method.name, "dtype": dtype_name, "prompts": len(prompts)}

    def base() -> Any:
        return loader.load(dtype=target, compute=target)

    with tempfile.TemporaryDirectory(prefix="finetune-merge-") as tmp:
        artifact = run_folder.fetch_adapter(Path(tmp) / "adapter")
        reference = logits(builder.reload(base(), artifact), tokenizer, prompts)  # the model as trained
        report["logit_scale"] = logit_scale(reference)
        if tolerance is None:
            tolerance = RELATIVE_TOLERANCE[dtype_name] * report["logit_scale"]
            why = f"{RELATIVE_TOLERANCE[dtype_name]:g} of the largest logit, {report['logit_scale']:.3g}: the {dtype_name} default"
        else:
            why = "--max-logit-diff"
        report["tolerance"] = tolerance
        quant = method.quantization(spec.method)
        if method.merge == "dequantized" and quant.quantizes_inputs:
            # LLM.int8 also rounds each matmul's input at run time, which no 16-bit model reproduces: the merge is
            # checked against the adapter on the dequantized weights, and the int8 model's own drift reported.
            dequantized = builder.reload(base().dequantize(dtype=torch_dtype(target)), artifact)
            unmerged = logits(dequantized, tokenizer, prompts)
            report[f"max_logit_diff_{spec.method.quant_type}_model"] = max_diff(unmerged, reference)
            reference = unmerged
            merged = dequantized.merge_and_unload()
            report["merged_into"] = (f"dequantized {dtype_name} base (the {spec.method.quant_type} weights the adapter "
                                     "was trained on; checked against the adapter on those weights)")
        elif method.merge == "dequantized":
            merged_4bit = builder.reload(base(), artifact).merge_and_unload()
            report["max_logit_diff_4bit_merge"] = max_diff(logits(merged_4bit, tokenizer, prompts), reference)
            del merged_4bit
            merged = builder.reload(base().dequantize(dtype=torch_dtype(target)), artifact).merge_and_unload()
            report["merged_into"] = (f"dequantized {dtype_name} base (the {spec.method.quant_type} weights the adapter "
                                     "was trained on)")
        elif method.merge == "adapter":
            merged = builder.reload(base(), artifact).merge_and_unload()
            report["merged_into"] = f"{dtype_name} base"
        else:  # "load": the artifact holds the trained weights themselves
            merged = builder.reload(base(), artifact)
            report["merged_into"] = f"{dtype_name} base"
        merged_logits = logits(merged, tokenizer, prompts)
        report["max_logit_diff"] = max_diff(merged_logits, reference)
        report["top1_agreement"] = top1_agreement(merged_logits, reference)
        if report["max_logit_diff"] > tolerance:
            raise FinetuneError(
                f"merge of {run_folder.run_id}: max logit difference {report['max_logit_diff']:.3g} against the adapter model "
                f"exceeds {tolerance:.3g} ({why}); nothing written (raise --max-logit-diff to accept it)"
            )
        merged = merged.to(torch_dtype(target))
        from sdk.store.atomic import staged_dir

        with staged_dir(out) as staging:
            merged.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / "merge_report.json").write_text(json.dumps(report, indent=2))
    report["out"] = str(out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.tools.merge", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run id or run folder URI")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--dtype", default="auto", help="auto, fp32, bf16 or fp16 (or float32, bfloat16, float16)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-logit-diff", type=float)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)

    from sdk.core.errors import FinetuneError
    from sdk.core.precision import parse_precision

    try:
        report = merge(args.run, args.out, dtype=parse_precision(args.dtype, option="--dtype"), num_prompts=args.prompts, tolerance=args.max_logit_diff,
                       force=args.force)
    except (FinetuneError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
