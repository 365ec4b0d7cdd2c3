"""QLoRA on a ~1B Llama-architecture model built locally (random weights, no download): the product with
its speed features vs a plain TRL + peft script, on one GPU.

Run (GPU): python tests/bench/bench_gpu.py [--steps 40] [--seq 1024] [--batch 8]
Smoke test of this script on a CPU (small model, a few steps): python tests/bench/bench_gpu.py --smoke
Prints tokens/s (non-padding tokens) and peak allocated memory of each side and their ratios
(goals: >= 1.5x tokens/s, <= 0.7x peak memory). Both sides train the same model, rows, seed, lr,
rank and batch. The plain side is what a TRL tutorial does: bf16 QLoRA (NF4, double quant), no
packing, SDPA, plain AdamW, rows padded to the longest in the batch. The product uses its GPU
defaults plus what the spec can ask: padding-free packing (flash-attention when installed, else SDPA
with the block-diagonal mask transformers builds from restarting position ids), Liger kernels when
liger-kernel is installed, fused AdamW, gradient checkpointing. Rows are of mixed length (64 tokens
to --seq), as instruction data is.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
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


def write_rows(path: Path, model_dir: Path, *, count: int, longest: int, seed: int) -> list[int]:
    """Rows of mixed length, as instruction data is (uniform from 64 tokens to the longest): the padding a
    plain batch carries is what padding-free packing removes. Words come from the built-in news rows."""
    import random

    from transformers import AutoTokenizer

    from launch.builtin_data import load_builtin

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    words = " ".join(r["input"] for r in load_builtin("builtin:news-topics")).split()
    rng = random.Random(seed)
    lengths = []
    with path.open("w") as out:
        for _ in range(count):
            target = rng.randint(64, longest)
            ids = tokenizer(" ".join(rng.choices(words, k=target)), add_special_tokens=False).input_ids[: target - 1]
            text = tokenizer.decode(ids)
            lengths.append(len(tokenizer(text).input_ids) + 1)  # + eos
            out.write(json.dumps({"text": text}) + "\n")
    return lengths


def plain(model_dir: str, rows_file: str, settings: str) -> None:
    """The tutorial QLoRA script: transformers + bitsandbytes + peft + trl."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    s = json.loads(settings)
    cuda = torch.cuda.is_available()
    rows = [json.loads(line) for line in Path(rows_file).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, device_map={"": 0} if cuda else "cpu",
                                                 dtype=torch.bfloat16 if cuda else torch.float32)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    tokens: list[tuple[float, int]] = []

    class Count(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                tokens.append((time.time(), int(state.num_input_tokens_seen)))

    args = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=s["steps"], per_device_train_batch_size=s["batch"],
                     learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
                     max_length=s["seq"], bf16=cuda, use_cpu=not cuda, gradient_checkpointing=True,
                     include_num_input_tokens_seen="non_padding", seed=0, data_seed=0)
    SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
               callbacks=[Count()]).train()
    (t0, n0), (t1, n1) = tokens[3], tokens[-1]  # after warm-up
    peak = torch.cuda.max_memory_allocated() if cuda else None
    print(json.dumps({"tokens_per_s": (n1 - n0) / (t1 - t0), "peak_bytes": peak}))


def gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def run_product(spec, overrides: list[str]):
    """The product on the same rows through `sdk.submit` (local backend): (tokens/s after warm-up, summary)."""
    import sdk
    from sdk.recipes import apply_overrides
    from sdk.spec import parse_spec

    data, _ = apply_overrides(spec.model_dump(mode="json"), overrides)
    run = sdk.submit(parse_spec(data), backend="local")
    if run.wait(progress=False).state != "succeeded":
        print(run.logs()[-4000:], file=sys.stderr)
        return None
    logged = [r for r in run.metrics() if "tokens_seen" in r][3:]
    tokens_per_s = (logged[-1]["tokens_seen"] - logged[0]["tokens_seen"]) / (logged[-1]["time"] - logged[0]["time"])
    return tokens_per_s, run.summary()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="a small model on the CPU: checks this script, measures nothing")
    parser.add_argument("--variant", action="append", default=[],
                        help="also run the product with these overrides (comma-separated), e.g. train.activation_offloading=false")
    parser.add_argument("--plain", nargs=3, metavar=("MODEL_DIR", "ROWS", "SETTINGS"))
    args = parser.parse_args()
    if args.plain:
        plain(*args.plain)
        return 0
    if args.smoke:
        args.steps, args.seq, args.batch = 6, 128, 2
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    model_dir = build_model(work / "model", SMOKE if args.smoke else LLAMA_1B)

    import sdk

    rows_file = work / "rows.jsonl"
    lengths = write_rows(rows_file, model_dir, count=args.steps * args.batch * 4, longest=args.seq, seed=0)
    padded = sum(max(lengths[i:i + args.batch]) * len(lengths[i:i + args.batch]) for i in range(0, len(lengths), args.batch))
    print(f"rows: {len(lengths)}, tokens per row {min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.0f}); "
          f"a batch padded to its longest row is {1 - sum(lengths) / padded:.0%} padding", flush=True)
    features = ["train.compile=false", "data.packing=true"]  # padding-free (launch.gpu.packing_choice)
    if importlib.util.find_spec("liger_kernel") is not None and not args.smoke:
        features.append("train.liger_kernels=true")
    spec = sdk.FineTuneSpec(
        model=str(model_dir), method={"name": "qlora", "r": 16, "alpha": 32},
        data={"source": str(rows_file), "template": "text", "max_length": args.seq, "eval_split": 0.0, "completion_only_loss": False},
        train={"max_steps": args.steps, "batch_size": args.batch, "lr": 2e-4, "logging_steps": 1, "seed": 0},
        eval={"before": False, "after": False, "generations": 0}, output=str(work / "runs"),
    )
    settings = json.dumps({"steps": args.steps, "seq": args.seq, "batch": args.batch})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINETUNE_HOME": str(work / "home")}
    done = subprocess.run([sys.executable, __file__, "--plain", str(model_dir), str(rows_file), settings],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        return 1
    base = json.loads(done.stdout.strip().splitlines()[-1])

    os.environ.update(env)
    shape = SMOKE if args.smoke else LLAMA_1B
    print(f"Llama {shape['num_hidden_layers']} layers x {shape['hidden_size']} hidden, QLoRA r=16 all-linear, "
          f"batch {args.batch}, seq {args.seq}, {args.steps} steps")
    print(f"plain TRL: {base['tokens_per_s']:,.0f} tokens/s, peak allocated {gib(base['peak_bytes'])}")
    for extra in [[]] + [v.split(",") for v in args.variant]:
        measured = run_product(spec, features + extra)
        if measured is None:
            return 1
        tokens_per_s, summary = measured
        print(f"finetune {features + extra} (attention {summary.attention}, {summary.features}): "
              f"{tokens_per_s:,.0f} tokens/s = {tokens_per_s / base['tokens_per_s']:.2f}x plain (goal >= 1.5x)")
        if base["peak_bytes"]:
            print(f"    peak allocated {gib(summary.peak_memory_bytes)} = {summary.peak_memory_bytes / base['peak_bytes']:.2f}x plain "
                  f"(goal <= 0.7x); reserved {gib(summary.peak_reserved_bytes)}", flush=True)
    if base["peak_bytes"]:
        from sdk.plan import estimate

        unpacked = spec.model_copy(update={"data": spec.data.model_copy(update={"packing": False})})
        predicted = estimate(unpacked, device="gpu", seq_len=args.seq, micro_batch=args.batch).allocated_bytes
        print(f"planner: predicted {gib(predicted)} for batch {args.batch} x seq {args.seq}; plain TRL measured "
              f"{gib(base['peak_bytes'])} ({predicted / base['peak_bytes'] - 1:+.0%})")
    else:
        print("peak memory: no CUDA device, not measured (smoke run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
