"""A standalone transformers model: the adapter merged into its dequantized 16-bit base, as `finetune merge` writes
it. Its runtime is transformers, and the merge itself is the check: the merged model's logits against the adapter
model's on the run's eval prompts, within the dtype's tolerance, or nothing is written."""

from __future__ import annotations

import shutil
from typing import Any

from launch.exports import ExportContext


def build(ctx: ExportContext) -> dict[str, Any]:
    folder = ctx.merged_folder()
    for path in sorted(folder.iterdir()):
        shutil.move(str(path), ctx.out / path.name)
    merge = ctx.report.get("merge", {})
    ctx.report["check"] = {"passed": True, "runtime": "transformers", "max_logit_diff": merge.get("max_logit_diff"),
                           "tolerance": merge.get("tolerance"), "top1_agreement": merge.get("top1_agreement")}
    return {"model": "."}
