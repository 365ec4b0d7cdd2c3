"""`finetune import` / sdk.importers: real Axolotl and LLaMA-Factory example configs (tests/data/importers, see its
README) each import to a recipe parse_spec validates, or are refused naming what the product lacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sdk.cli import app
from sdk.core.recipes import load_recipe
from sdk.importers import ImportRefused, import_config

DATA = Path(__file__).resolve().parent / "data" / "importers"
AX, LF = DATA / "axolotl", DATA / "llamafactory"

# file -> (objective, method) of the recipe it imports to
IMPORTS = {
    AX / "llama-3-qlora-1b.yml": ("sft", "qlora"),
    AX / "llama-3-qlora-1b-kto.yaml": ("kto", "qlora"),
    AX / "llama-3-fft-8b.yaml": ("sft", "full"),
    AX / "mistral-dpo-mistral-dpo-qlora.yml": ("dpo", "qlora"),
    AX / "mistral-orpo-mistral-qlora-orpo.yml": ("orpo", "qlora"),
    AX / "gpt-oss-gpt-oss-20b-fft-deepspeed-zero3.yaml": ("sft", "full"),
    LF / "train_lora-qwen3_lora_dpo.yaml": ("dpo", "lora"),
    LF / "train_lora-qwen3_lora_pretrain.yaml": ("sft", "lora"),
    LF / "ascend-qwen3_full_sft_fsdp2.yaml": ("sft", "full"),
}
# file -> the start of each line of the refusal (one per missing capability)
REFUSALS = {
    AX / "llama-3-instruct-dpo-lora-8b.yml": ["load_in_8bit: an 8-bit base"],
    AX / "llama-3-lora-1b-deduplicate-sft.yml": ["load_in_8bit: an 8-bit base", "datasets: 2 datasets in one run"],
    AX / "llama-3-qlora-1b-gdpo.yaml": ["rl: gdpo", "datasets[0].type: rwd.gsm8k_transform: a custom Python transform"],
    AX / "llama-3-qlora-fsdp-70b.yaml": ["fsdp: QLoRA under FSDP", "fsdp_config.fsdp_offload_params: FSDP CPU offload"],
    AX / "phi-phi3-ft-fsdp.yml": ["fsdp_config.fsdp_offload_params: FSDP CPU offload"],
    AX / "llava-lora-7b.yaml": ["processor_type: AutoProcessor: images/video rows",
                                "lora_target_modules: a regular expression"],
    AX / "alst-llama3-8b-deepspeed-alst.yaml": ["context_parallel_size: 8: long-context/sequence", "tiled_mlp",
                                                "datasets: 2 datasets in one run", "datasets[0].data_files"],
    LF / "train_lora-qwen3_lora_sft.yaml": ["dataset: 2 datasets in one run"],
    LF / "train_lora-qwen3_lora_sft_ds3.yaml": ["dataset: 2 datasets in one run"],
    LF / "train_full-qwen3_full_sft.yaml": ["dataset: 2 datasets in one run"],
    LF / "train_qlora-qwen3_lora_sft_otfq.yaml": ["dataset: 2 datasets in one run"],
    LF / "train_lora-qwen3vl_lora_sft.yaml": ["dataset: 3 datasets in one run", "dataset: mllm_demo: images/video"],
    LF / "train_lora-qwen3_lora_reward.yaml": ["stage: rm: a reward model"],
    LF / "extras-fp8-llama3_fp8_deepspeed_sft.yaml": ["fp8: True: FP8 training"],
    LF / "train_lora-qwen3_lora_kto.yaml": ["the recipe it maps to is refused: train.batch_size: kto estimates"],
}


def test_every_vendored_config_is_listed():
    vendored = {p for p in DATA.glob("*/*.y*ml")}
    assert len(vendored) >= 20
    assert vendored == set(IMPORTS) | set(REFUSALS)


@pytest.mark.parametrize("path", sorted(IMPORTS), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_imports_to_a_valid_recipe(path, tmp_path):
    result = import_config(path)
    out = tmp_path / "recipe.yaml"
    out.write_text(result.text)
    spec = load_recipe(out)  # parse_spec through the recipe loader, from the text written
    assert (spec.objective.name, spec.method.name) == IMPORTS[path]
    assert all(len(line) <= 120 for line in result.text.splitlines())
    assert result.text.startswith(f"# Imported by `finetune import` from the {result.tool} config {path.name}.")


@pytest.mark.parametrize("path", sorted(REFUSALS), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_refused_naming_each_gap(path):
    with pytest.raises(ImportRefused) as refused:
        import_config(path)
    assert len(refused.value.missing) == len(REFUSALS[path]), refused.value.missing
    for line, start in zip(refused.value.missing, REFUSALS[path], strict=True):
        assert line.startswith(start), line


def test_header_names_the_defaults_that_differ():
    axolotl = import_config(AX / "llama-3-qlora-1b-kto.yaml")
    assert axolotl.recipe["data"]["eval_split"] == 0
    assert any(n.startswith("data.eval_split: 0: Axolotl holds nothing out") for n in axolotl.notes)
    assert any(n.startswith("evals_per_epoch: 4: the spec has no per-epoch cadence; set train.eval_steps")
               for n in axolotl.notes)
    full = import_config(AX / "llama-3-fft-8b.yaml")
    assert full.recipe["model"]["dtype"] == "bfloat16"
    assert any(n.startswith("model.dtype: bfloat16: Axolotl loads a full fine-tune's weights in bf16") for n in full.notes)
    factory = import_config(LF / "train_lora-qwen3_lora_dpo.yaml")
    assert factory.recipe["method"]["alpha"] == 16 == 2 * factory.recipe["method"]["r"]
    assert any("lora_alpha defaults to 2 × lora_rank" in n for n in factory.notes)
    assert "# - method.alpha: 16: LLaMA-Factory's lora_alpha defaults to 2 × lora_rank" in factory.text
    assert factory.recipe["data"]["source"].endswith("data/dpo_en_demo.json")  # read through dataset_info.json


def test_deepspeed_json_is_read():
    result = import_config(AX / "gpt-oss-gpt-oss-20b-fft-deepspeed-zero3.yaml")
    assert result.recipe["distributed"] == {"strategy": "deepspeed", "zero_stage": 3, "offload": False}
    assert result.recipe["train"]["optimizer"] == "adamw_torch"  # 8-bit optimizers do not run under DeepSpeed


def test_data_dir_points_at_dataset_info(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text((LF / "train_lora-qwen3_lora_dpo.yaml").read_text())
    with pytest.raises(ImportRefused, match="dataset_info.json not found"):
        import_config(config)
    result = import_config(config, data_dir=LF / "data")
    assert result.recipe["data"]["format"] == "preference"


def test_custom_transform_refused_by_name(tmp_path):
    config = tmp_path / "custom.yml"
    config.write_text(yaml.safe_dump({"base_model": "m/x", "adapter": "lora", "lora_target_linear": True,
                                      "datasets": [{"path": "d.jsonl", "type": "my_transforms.to_chat"}]}))
    with pytest.raises(ImportRefused, match=r"my_transforms\.to_chat: a custom Python transform"):
        import_config(config)


def test_cli_writes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "r.yaml"
    runner = CliRunner()
    done = runner.invoke(app, ["import", str(AX / "llama-3-qlora-1b.yml"), "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert load_recipe(out).method.name == "qlora"
    again = runner.invoke(app, ["import", str(AX / "llama-3-qlora-1b.yml"), "-o", str(out)])
    assert again.exit_code == 2 and "exists; pass --force" in again.output
    forced = runner.invoke(app, ["import", str(LF / "train_lora-qwen3_lora_dpo.yaml"), "-o", str(out), "--force"])
    assert forced.exit_code == 0 and load_recipe(out).objective.name == "dpo"


def test_cli_refusal_exits_2_one_line_per_gap():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "sdk.cli", "import", str(AX / "llama-3-qlora-fsdp-70b.yaml")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert "cannot import" in lines[0] and len(lines) == 3
