"""`finetune merge`: a standalone model whose logits match the adapter model; QLoRA merges into the
dequantized base, never into the 4-bit weights."""

from __future__ import annotations

import json

import pytest
from helpers import run_node

import sdk
from sdk.core.recipes import load_recipe

FAST = ["train.max_steps=10", "data.max_samples=64", "eval.num_samples=4", "eval.max_new_tokens=4"]


def trained(tmp_path, method: str) -> str:
    spec = load_recipe("tiny", [*FAST, f"method={method}", f"output={tmp_path / 'runs'}"])
    result, folder = run_node(spec, tmp_path / "runs")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder.uri


def test_lora_merge_matches_the_adapter_in_fp32(tmp_path, run_cli):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launch.models import local_source

    run = trained(tmp_path, "lora")
    out = tmp_path / "merged"
    result = run_cli("merge", run, str(out), "--json", timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dtype"] == "fp32" and report["max_logit_diff"] < 1e-4
    assert json.loads((out / "merge_report.json").read_text()) == {k: v for k, v in report.items() if k != "out"}
    # independently: the merged folder is a plain model whose logits match base + adapter
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base_dir = local_source(sdk.get_run(run).spec().model).path
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                        sdk.get_run(run).fetch_adapter(tmp_path / "adapter"))
    ids = AutoTokenizer.from_pretrained(out)("### Instruction:\nClassify: stocks rally\n\n### Response:\n", return_tensors="pt")
    with torch.no_grad():
        diff = (merged(**ids).logits - adapter(**ids).logits).abs().max().item()
    assert diff < 1e-4
    # an existing output is never overwritten silently
    again = run_cli("merge", run, str(out), timeout=180)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("qlora"), "qlora")


def test_qlora_merges_into_the_dequantized_base(tmp_path, qlora_run):
    run = qlora_run
    report = sdk.merge(run, tmp_path / "merged")
    assert "dequantized" in report["merged_into"]
    assert report["max_logit_diff"] < 1e-4  # what was written
    # merging into the 4-bit weights re-quantizes W + BA and loses most of the update
    assert report["max_logit_diff_4bit_merge"] > 100 * max(report["max_logit_diff"], 1e-6)
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config


def test_an_int8_base_merges_into_its_dequantized_weights(tmp_path):
    """LLM.int8 also quantizes activations at run time: the merge is checked against the adapter on the
    dequantized int8 weights (exact in fp32), and the 8-bit model's own drift is reported beside it."""
    spec = load_recipe("tiny", [*FAST, "method=qlora", "method.quant_type=int8", f"output={tmp_path / 'runs'}"])
    result, folder = run_node(spec, tmp_path / "runs")
    assert result.returncode == 0, result.stderr[-3000:]
    report = sdk.merge(folder.uri, tmp_path / "merged")
    assert "dequantized" in report["merged_into"] and "int8" in report["merged_into"]
    assert report["max_logit_diff"] < 1e-4 and report["max_logit_diff_int8_model"] > 0
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())


def test_soft_prompts_cannot_be_merged(tmp_path):
    run = trained(tmp_path, "prompt_tuning")
    with pytest.raises(sdk.FinetuneError, match="method.name: prompt_tuning .* cannot be merged"):
        sdk.merge(run, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_tolerance_breach_writes_nothing(tmp_path, qlora_run):
    run = qlora_run
    with pytest.raises(sdk.FinetuneError, match=r"exceeds 1e-12 \(--max-logit-diff\); nothing written"):
        sdk.merge(run, tmp_path / "merged", max_logit_diff=1e-12)
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.partial-*"))


def test_a_bf16_merge_passes_the_default_tolerance_which_still_catches_a_4bit_merge(tmp_path, qlora_run):
    """bf16 rounding moves logits in proportion to their size (an absolute 0.5 refused a good merge on an
    H100); the default is relative to the largest logit and still refuses what a 4-bit merge does."""
    report = sdk.merge(qlora_run, tmp_path / "merged", dtype="bf16")
    assert report["dtype"] == "bf16" and report["tolerance"] == pytest.approx(0.1 * report["logit_scale"])
    assert report["max_logit_diff"] <= report["tolerance"] and report["top1_agreement"] > 0.9
    assert report["max_logit_diff_4bit_merge"] > 2 * report["tolerance"]
