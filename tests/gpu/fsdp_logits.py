"""Is a model wrapped by FSDP2 (torch's fully_shard, as transformers' FSDP2 path wraps it) the same model?
Logits of a LoRA and a QLoRA (NF4, quant storage in the compute dtype) Llama, unwrapped vs wrapped, at world
size 1, within bf16 tolerance. This is the fact behind refusing fsdp with a 4-bit base (bitsandbytes#1945,
packed NF4 bytes rewritten as canonical NaNs on the way through FSDP2): run on a GPU by tests/gpu/verify.sh.

    python tests/gpu/fsdp_logits.py [--device cuda|cpu] [--out results.json]
On this project's CPU machines both pairs agree exactly (0.0), so the refusal rests on the GPU report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile


def check(method: str, device: str) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=1000)
    folder = tempfile.mkdtemp(prefix="fsdp-logits-")
    LlamaForCausalLM(config).save_pretrained(folder)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype) if method == "qlora" else None
    model = LlamaForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=dtype,
                                             device_map={"": 0} if device == "cuda" else "cpu")
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():  # B != 0, so the adapter takes part in the comparison
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    ids = torch.randint(0, 1000, (2, 64), device=device)
    with torch.no_grad():
        before = model(input_ids=ids).logits.float()
    mesh = init_device_mesh(device, (1,))
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    with torch.no_grad():
        after = model(input_ids=ids).logits.float()
    diff = (after - before).abs().max().item()
    scale = before.abs().max().item()
    tolerance = 0.02 * scale if dtype == torch.bfloat16 else 1e-5 * max(scale, 1.0)
    return {"method": method, "device": device, "dtype": str(dtype), "max_logit_diff": diff, "largest_logit": scale,
            "tolerance": tolerance, "same": diff <= tolerance}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out")
    args = parser.parse_args()
    import torch
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo", rank=0, world_size=1)
    if args.device == "cuda":
        torch.cuda.set_device(0)
    results = [check(method, args.device) for method in ("lora", "qlora")]
    dist.destroy_process_group()
    for r in results:
        print(f"FSDP2 {r['method']} on {r['device']} ({r['dtype']}): max logit diff {r['max_logit_diff']:.4g} of "
              f"{r['largest_logit']:.4g} -> {'same model' if r['same'] else 'WRONG under FSDP2'}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
