"""`finetune export` of a real SmolLM2-135M run (the news-labelling recipe, shortened) through the pinned llama.cpp:
GGUF merged and quantized, the LoRA alone as a GGUF LoRA, the Ollama Modelfile, the merged model; each loaded by
its runtime and held against transformers on the held-out rows. One trained run serves the module."""

from __future__ import annotations

import importlib.util
import json

import pytest
from helpers import needs_service

import sdk
from sdk.core.recipes import load_recipe

MISSING = None if importlib.util.find_spec("llama_cpp") else "llama-cpp-python (bash scripts/install.sh export)"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200), needs_service("llama.cpp", MISSING)]


@pytest.fixture(scope="module")
def news_run(tmp_path_factory):
    store = tmp_path_factory.mktemp("export-store")
    home = tmp_path_factory.mktemp("export-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETUNE_HOME", str(home))
        # trained to a confident model (an unsure one flips answers under any rounding, in either runtime)
        spec = load_recipe("smollm2-news", [f"output={store}", "train.max_steps=30", "data.max_samples=240",
                                            "eval.before=false", "eval.num_samples=24", "eval.generations=0"])
        run = sdk.submit(spec, backend="local")
        assert run.wait(progress=False, timeout=900).state == "succeeded", run.logs()[-3000:]
    return run


def test_gguf_q8_0_and_q4_k_m_answer_as_transformers_does_and_fetch_back_verified(news_run, tmp_path, run_cli):
    result = run_cli("export", news_run.uri, "--format", "gguf", "--quant", "q8_0", "--quant", "q4_k_m", "--json",
                     "-o", str(tmp_path / "gguf"), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    check = report["check"]
    assert check["passed"] and set(check["files"]) == {"q8_0", "q4_k_m"}
    for result in check["files"].values():
        assert result["metric"] == "label_accuracy" and abs(result["difference_points"]) <= 5
        assert result["chat_template_carried"] and result["rows"] == 24 and result["load_s"] < 30
    assert report["llama_cpp"] == "0.3.36" and report["merge"]["max_logit_diff"] <= report["merge"]["tolerance"]
    names = sorted(p.name for p in (tmp_path / "gguf").iterdir() if not p.name.startswith("."))
    assert names == ["MANIFEST.json", "export_report.json", "smollm2-news-q4_k_m.gguf", "smollm2-news-q8_0.gguf"]
    assert report["sizes"]["smollm2-news-q4_k_m.gguf"] < report["sizes"]["smollm2-news-q8_0.gguf"]
    again = run_cli("export", news_run.uri, "--format", "gguf")
    assert again.returncode == 2 and "already exported (pass --force" in again.stderr


def test_ollama_adapter_only_is_a_gguf_lora_on_the_base_gguf_with_the_runs_format(news_run, tmp_path):
    """The LoRA alone as a GGUF LoRA that llama.cpp applies to the base's GGUF (checked so), and a Modelfile naming
    both, whose TEMPLATE writes the run's instruction format with its fixed instruction."""
    from sdk.data.chat_format import parse_modelfile

    report = news_run.export("ollama", adapter_only=True, quants=["q8_0"], out=tmp_path / "ollama")
    check = report["check"]["files"]["q8_0"]
    assert report["check"]["passed"] and abs(check["difference_points"]) <= 5, check
    assert report["files"]["adapter"] == "smollm2-news-lora-f16.gguf"
    assert report["sizes"]["smollm2-news-lora-f16.gguf"] < report["sizes"]["smollm2-news-base-q8_0.gguf"] / 5
    assert report["committed"].endswith("/exports/ollama-adapter") and report["ollama"]["family"] == "instruction+fixed"
    modelfile = parse_modelfile((tmp_path / "ollama" / "Modelfile").read_text())
    assert modelfile["from"] == "./smollm2-news-base-q8_0.gguf"
    assert modelfile["adapter"] == "./smollm2-news-lora-f16.gguf"
    assert "### Input:\n{{ $m.Content }}" in modelfile["template"]
    assert "Classify this news text" in modelfile["template"]
    assert set(report["ollama"]["stops"]) <= set(modelfile["parameters"]["stop"])


def test_merged_is_a_standalone_model_checked_against_the_adapter(news_run, tmp_path):
    report = news_run.export("merged", out=tmp_path / "merged")
    assert report["check"]["passed"] and report["check"]["max_logit_diff"] <= report["check"]["tolerance"]
    names = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "export_report.json"} <= names
