"""The product's overhead against a plain TRL + peft script: step time (goal <= 1.05x) and the time from
`finetune launch` to the first training step, on this CPU, same model, data and hyperparameters.

Run: python tests/bench/bench_overhead.py [--steps 30] [--model smollm2|tiny]
The plain script trains the same LoRA (SFTTrainer, same rows as the product renders them, same
seed, batch, lr, length, fp32) and timestamps every logged step; the product's steps are read back
from its metrics.jsonl. Step time is the median gap between consecutive logged steps after 3
warm-up steps; time to first step is from starting the command to the first step's log.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"smollm2": "smollm2-135m", "tiny": "tiny"}


def overrides(steps: int, out: str) -> list[str]:
    # No evaluation before or after and no held-out split: both sides only train.
    return [f"train.max_steps={steps}", "train.logging_steps=1", "train.batch_size=4", "train.scheduler=constant",
            "train.precision=fp32", "data.eval_split=0.0", "data.eval_source=null", "data.max_length=128",
            "eval.before=false", "eval.after=false", "eval.generations=0", f"output={out}"]


def plain(rows_file: str, model_dir: str, spec_file: str) -> None:
    """The script a user would write by hand: transformers + peft + trl, nothing of this product."""
    start = float(os.environ["BENCH_START"])
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    spec = json.loads(Path(spec_file).read_text())
    t, m = spec["train"], spec["method"]
    rows = [json.loads(line) for line in Path(rows_file).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    torch.manual_seed(t["seed"])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=m["r"], lora_alpha=m["alpha"], lora_dropout=m["dropout"],
                                             target_modules=m["target_modules"]))
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                stamps.append(time.time())

    args = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=t["max_steps"], per_device_train_batch_size=t["batch_size"],
                     learning_rate=t["lr"], lr_scheduler_type=t["scheduler"], max_grad_norm=t["max_grad_norm"],
                     weight_decay=t["weight_decay"], optim="adamw_torch", bf16=False, fp16=False, use_cpu=True,
                     gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
                     max_length=spec["data"]["max_length"], completion_only_loss=True, seed=t["seed"], data_seed=t["seed"])
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[Stamp()])
    trainer.train()
    print(json.dumps({"first_step_s": stamps[0] - start, "stamps": stamps}))


def step_time(stamps: list[float]) -> float:
    gaps = [b - a for a, b in zip(stamps[3:-1], stamps[4:], strict=True)]
    return statistics.median(gaps)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", choices=list(MODELS), default="smollm2")
    parser.add_argument("--plain", nargs=3, metavar=("ROWS", "MODEL_DIR", "SPEC"))
    args = parser.parse_args()
    if args.plain:
        plain(*args.plain)
        return 0

    from launch.data import prepare
    from launch.models import local_source
    from sdk.core.recipes import load_recipe

    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    recipe = MODELS[args.model]
    sets = overrides(args.steps, str(work / "runs"))
    spec = load_recipe(recipe, sets)
    model_dir = local_source(spec.model).path  # the GGUF dequantized once, read by both sides
    rows = prepare(spec).train
    (work / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "spec.json").write_text(spec.model_dump_json())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINETUNE_HOME": str(work / "home")}

    start = time.time()
    done = subprocess.run([sys.executable, __file__, "--plain", str(work / "rows.jsonl"), model_dir, str(work / "spec.json")],
                          capture_output=True, text=True, env={**env, "BENCH_START": str(start)}, cwd=ROOT)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return 1
    base = json.loads(done.stdout.strip().splitlines()[-1])

    start = time.time()
    launched = subprocess.run(["finetune", "launch", recipe, "--local", *[f"--set={s}" for s in sets]],
                              capture_output=True, text=True, env=env, cwd=ROOT)
    if launched.returncode != 0:
        print(launched.stdout[-3000:] + launched.stderr[-3000:], file=sys.stderr)
        return 1
    import sdk

    run = sdk.list_runs(store=str(work / "runs"))[0]
    stamps = [row["time"] for row in run.metrics() if "loss" in row]
    product_first = stamps[0] - start
    ours, theirs = step_time(stamps), step_time(base["stamps"])
    print(f"model {spec.model.id}, {len(rows)} rows, {args.steps} steps, batch {spec.train.batch_size}, seq {spec.data.max_length}")
    print(f"step time: finetune {ours * 1000:.1f} ms, plain TRL + peft {theirs * 1000:.1f} ms, ratio {ours / theirs:.3f}x (goal <= 1.05x)")
    print(f"command to first step: finetune launch {product_first:.1f} s, plain script {base['first_step_s']:.1f} s "
          f"({product_first - base['first_step_s']:+.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
