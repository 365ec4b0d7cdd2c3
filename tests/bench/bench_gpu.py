"""QLoRA on a ~1B Llama-architecture model built locally (random weights, no download), on one GPU: the product
against two TRL scripts, in one run, with repeats and their spread.

Run (GPU):  python tests/bench/bench_gpu.py [--steps 40] [--seq 1024] [--batch 8] [--repeats 3] [--out FILE]
CPU dry run (a small model, a few steps; checks the script, measures nothing): python tests/bench/bench_gpu.py --smoke

Sides, all on the same model, rows, seed, lr, LoRA rank (16, all-linear), batch and length:
  (a) tutorial  what a TRL QLoRA tutorial writes: NF4 + double quant, prepare_model_for_kbit_training, rows
                padded to the longest in the batch, SDPA, gradient checkpointing, default optimizer.
  (b) tuned     the best a competent TRL user writes: (a) plus padding-free packing, Liger kernels when
                liger-kernel is installed, the attention the product picks (flash-attention 2 when flash-attn
                is installed, else SDPA), non-reentrant checkpointing, fused AdamW.
  finetune      the product through sdk.submit with `data.packing: true` and `train.liger_kernels: true`
                (when installed) on its GPU defaults.
Row sets: `mix`, lengths uniform from 64 tokens to --seq (a padded batch is ~40% padding), and `uniform`,
every row exactly --seq tokens (no padding to remove, nothing to pack: raw step speed).
Goals: finetune >= 1.5x (a) tokens/s, >= 1.0x (b), and peak allocated memory <= (b)'s. Tokens are non-padding
tokens; tokens/s is measured after 3 warm-up steps; each side's figure is the median of --repeats runs, with
the min-max spread.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
            "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 4096}  # TinyLlama-1.1B's shape
SMOKE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 1024}
WARMUP = 3


def build_model(out: Path, shape: dict) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from launch.tiny import train_tokenizer

    tokenizer = train_tokenizer()
    config = LlamaConfig(**shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B-parameter Llama in {out}", flush=True)
    return out


def write_rows(path: Path, model_dir: Path, *, count: int, shortest: int, longest: int, seed: int) -> list[int]:
    """Rows with token lengths uniform in [shortest, longest] (eos included). Words come from the built-in news rows."""
    import random

    from transformers import AutoTokenizer

    from sdk.data.builtin import load_builtin

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    words = " ".join(r["input"] for r in load_builtin("builtin:news-topics")).split()
    rng = random.Random(seed)
    lengths = []
    with path.open("w") as out:
        for _ in range(count):
            target = rng.randint(shortest, longest)
            ids = tokenizer(" ".join(rng.choices(words, k=target)), add_special_tokens=False).input_ids[: target - 1]
            text = tokenizer.decode(ids)
            lengths.append(len(tokenizer(text, add_special_tokens=False).input_ids) + 1)  # + eos
            out.write(json.dumps({"text": text}) + "\n")
    return lengths


def trl_script(model_dir: str, rows_file: str, settings: str) -> None:
    """Side (a) or (b): a TRL + peft + bitsandbytes script as a user writes it."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    s = json.loads(settings)
    tuned = s["side"] == "tuned"
    cuda = torch.cuda.is_available()
    rows = [json.loads(line) for line in Path(rows_file).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, device_map={"": 0} if cuda else "cpu",
                                                 dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation=s["attention"] if tuned else "sdpa")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    logged: list[tuple[float, int]] = []

    class Count(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logged.append((time.time(), int(state.num_input_tokens_seen)))

    extra = dict(packing=True, padding_free=True, use_liger_kernel=s["liger"], optim="adamw_torch_fused" if cuda else "adamw_torch",
                 gradient_checkpointing_kwargs={"use_reentrant": False}) if tuned else {}
    args = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=s["steps"], per_device_train_batch_size=s["batch"],
                     learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
                     max_length=s["seq"], bf16=cuda, use_cpu=not cuda, gradient_checkpointing=True,
                     include_num_input_tokens_seen="non_padding", seed=0, data_seed=0, **extra)
    SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
               callbacks=[Count()]).train()
    (t0, n0), (t1, n1) = logged[WARMUP], logged[-1]
    peak = torch.cuda.max_memory_allocated() if cuda else None
    print(json.dumps({"tokens_per_s": (n1 - n0) / (t1 - t0), "peak_bytes": peak}))


def run_trl(side: str, model_dir: Path, rows_file: Path, args, attention: str, liger: bool, env: dict) -> dict | None:
    settings = json.dumps({"side": side, "steps": args.steps, "seq": args.seq, "batch": args.batch, "attention": attention,
                           "liger": liger})
    done = subprocess.run([sys.executable, __file__, "--trl", str(model_dir), str(rows_file), settings],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        print(f"{side} failed:\n{done.stderr[-4000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_product(spec, overrides: list[str]) -> dict | None:
    """The product on the same rows through `sdk.submit` (local backend)."""
    import sdk
    from sdk.core.recipes import apply_overrides
    from sdk.core.spec import parse_spec

    data, _ = apply_overrides(spec.model_dump(mode="json"), overrides)
    run = sdk.submit(parse_spec(data), backend="local")
    if run.wait(progress=False).state != "succeeded":
        print(run.logs()[-4000:], file=sys.stderr)
        return None
    logged = [r for r in run.metrics() if "tokens_seen" in r][WARMUP:]
    summary = run.summary()
    return {"tokens_per_s": (logged[-1]["tokens_seen"] - logged[0]["tokens_seen"]) / (logged[-1]["time"] - logged[0]["time"]),
            "peak_bytes": summary.peak_memory_bytes if summary.peak_memory_kind == "cuda_max_memory_allocated" else None,
            "attention": summary.attention, "features": str(summary.features)}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def gib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", default="mix,uniform", help="row sets to run, each NAME[:REPEATS]: mix, uniform")
    parser.add_argument("--smoke", action="store_true", help="a small model on the CPU: checks this script, measures nothing")
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument("--trl", nargs=3, metavar=("MODEL_DIR", "ROWS", "SETTINGS"))
    args = parser.parse_args()
    if args.trl:
        trl_script(*args.trl)
        return 0
    if args.smoke:
        args.steps, args.seq, args.batch, args.repeats = WARMUP + 3, 128, 2, 1
    import torch

    from launch.gpu import attention_choice, flash_attn_installed

    cuda = torch.cuda.is_available()
    capability = torch.cuda.get_device_capability() if cuda else None
    attention, _ = attention_choice("auto", cuda=cuda, capability=capability, flash_attn_installed=flash_attn_installed())
    liger = cuda and importlib.util.find_spec("liger_kernel") is not None
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    shape = SMOKE if args.smoke else LLAMA_1B
    model_dir = build_model(work / "model", shape)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINETUNE_HOME": str(work / "home")}
    os.environ.update(env)
    report: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        report.append(line)

    import importlib.metadata as md

    versions = {n: md.version(n) for n in ("torch", "transformers", "peft", "trl", "bitsandbytes") if importlib.util.find_spec(n)}
    say(f"# bench_gpu on {torch.cuda.get_device_name() if cuda else 'CPU (smoke: measures nothing)'}; {versions}; "
        f"liger {'yes' if liger else 'no'}, attention {attention}; {time.strftime('%Y-%m-%d')}")
    say(f"Llama {shape['num_hidden_layers']} layers x {shape['hidden_size']} hidden, QLoRA r=16 all-linear, batch {args.batch}, "
        f"seq {args.seq}, {args.steps} steps; tokens/s as median [min-max] of the repeats")
    import sdk

    features = ["train.compile=false", "data.packing=true", *(["train.liger_kernels=true"] if liger else [])]
    sets = {"mix": (64, args.seq), "uniform": (args.seq, args.seq)}
    goals_met = True
    for entry in args.rows.split(","):
        name, _, times = entry.partition(":")
        repeats = int(times or args.repeats)
        shortest, longest = sets[name]
        rows_file = work / f"rows-{name}.jsonl"
        lengths = write_rows(rows_file, model_dir, count=args.steps * args.batch * 4, shortest=shortest, longest=longest, seed=0)
        padded = sum(max(lengths[i:i + args.batch]) * len(lengths[i:i + args.batch]) for i in range(0, len(lengths), args.batch))
        say(f"\n## rows: {name} ({repeats} repeats): {len(lengths)} rows of {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}); "
            f"a batch padded to its longest row is {1 - sum(lengths) / padded:.0%} padding")
        spec = sdk.FineTuneSpec(
            model=str(model_dir), method={"name": "qlora", "r": 16, "alpha": 32},
            data={"source": str(rows_file), "template": "text", "max_length": args.seq, "eval_split": 0.0, "completion_only_loss": False},
            train={"max_steps": args.steps, "batch_size": args.batch, "lr": 2e-4, "logging_steps": 1, "seed": 0},
            eval={"before": False, "after": False, "generations": 0}, output=str(work / "runs"),
        )
        results: dict[str, list[dict]] = {"tutorial": [], "tuned": [], "finetune": []}
        for _ in range(repeats):  # interleaved, so drift in the machine's state spreads over every side
            for side in ("tutorial", "tuned"):
                measured = run_trl(side, model_dir, rows_file, args, attention, liger, env)
                if measured is None:
                    return 1
                results[side].append(measured)
            measured = run_product(spec, features)
            if measured is None:
                return 1
            results["finetune"].append(measured)
        speed = {side: [r["tokens_per_s"] for r in runs] for side, runs in results.items()}
        peak = {side: max((r["peak_bytes"] or 0) for r in runs) or None for side, runs in results.items()}
        median = {side: statistics.median(v) for side, v in speed.items()}
        say("| side | tokens/s | vs (a) tutorial | vs (b) tuned | peak allocated |")
        say("|---|---|---|---|---|")
        for side, label in (("tutorial", "(a) TRL tutorial"), ("tuned", "(b) TRL tuned"), ("finetune", "finetune")):
            say(f"| {label} | {spread(speed[side])} | {median[side] / median['tutorial']:.2f}x | {median[side] / median['tuned']:.2f}x "
                f"| {gib(peak[side])} |")
        say(f"finetune ran with attention {results['finetune'][0]['attention']}, {results['finetune'][0]['features']}")
        if cuda:
            met = (median["finetune"] >= 1.5 * median["tutorial"] or name == "uniform", median["finetune"] >= median["tuned"],
                   (peak["finetune"] or 0) <= (peak["tuned"] or 0))
            goals_met &= all(met)
            say(f"goals: >= 1.5x (a) {'met' if met[0] else 'MISSED'}{' (not a goal on uniform rows)' if name == 'uniform' else ''}; "
                f">= 1.0x (b) {'met' if met[1] else 'MISSED'}; peak <= (b) {'met' if met[2] else 'MISSED'}")
            if name == "mix":
                from sdk.core.plan import estimate

                unpacked = spec.model_copy(update={"data": spec.data.model_copy(update={"packing": False})})
                predicted = estimate(unpacked, device="gpu", seq_len=args.seq, micro_batch=args.batch).allocated_bytes
                say(f"planner: predicted {gib(predicted)} for batch {args.batch} x seq {args.seq}; (a) measured "
                    f"{gib(peak['tutorial'])} ({predicted / peak['tutorial'] - 1:+.0%})")
    if not cuda:
        say("\nno CUDA device: a smoke run of the script; no figure above is a measurement")
    if args.out:
        Path(args.out).write_text("\n".join(report) + "\n")
    return 0 if goals_met else 3


if __name__ == "__main__":
    sys.exit(main())
