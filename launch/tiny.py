"""Tiny models for dry runs and tests: the target architecture shrunk, with a tokenizer trained locally.

`tiny:llama` (also qwen2, mistral, ...) builds a ~150k-parameter model in about a second and caches
it. `finetune tiny-model --like <recipe | config.json | model dir> OUT` shrinks a real architecture
(keeping its model_type, activation, tying and attention layout) so the node code runs end to end
on a CPU without downloading weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdk.core.architectures import TINY_CHAT_TEMPLATE as CHAT_TEMPLATE  # client and node agree on the tiny models
from sdk.core.architectures import TINY_SHAPE as SHRINK
from sdk.core.architectures import TINY_VOCAB as VOCAB_SIZE
from sdk.core.modelref import TINY_VERSION, tiny_arch, tiny_dir


def train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sdk.data.builtin import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|end|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    texts = corpus() + ["The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?'\"()[]{}<>/\\-_=+*&%$#@"]
    tok.train_from_iterator(texts * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>", bos_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def shrink_config(config: dict[str, Any]) -> dict[str, Any]:
    """A small config of the same architecture: few layers, small hidden, the GQA ratio kept."""
    out = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("quantization_config", "auto_map")}
    heads = config.get("num_attention_heads") or SHRINK["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    out.update(SHRINK)
    out["num_key_value_heads"] = max(1, SHRINK["num_attention_heads"] // max(1, heads // kv))
    out["head_dim"] = SHRINK["hidden_size"] // SHRINK["num_attention_heads"]
    out["vocab_size"] = VOCAB_SIZE
    out["max_position_embeddings"] = min(int(config.get("max_position_embeddings") or 2048), 2048)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "sliding_window", "layer_types", "max_window_layers",
                "rope_scaling", "torch_dtype", "dtype", "transformers_version", "architectures"):
        out.pop(key, None)
    return out


def build_tiny(out: Path, config: dict[str, Any] | None = None, *, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer to `out` (atomically). `config` is the architecture to shrink."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = config or {"model_type": "llama"}
    model_type = config.get("model_type")
    if not model_type:
        raise ValueError("config has no model_type")
    tokenizer = train_tokenizer()
    small = shrink_config(config)
    small.pop("model_type", None)
    # Default init (std 0.02) behind RMSNorm bounds logits to about ±1.3: a frozen random head could
    # never become confident. A wider init lets adapters on a random tiny model really learn.
    small.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None, initializer_range=0.25)
    cfg = AutoConfig.for_model(model_type, **small)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out)
    from sdk.store.atomic import staged_dir

    try:
        with staged_dir(out) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / "finetune_tiny.json").write_text(json.dumps({"version": TINY_VERSION, "shrunk_from": model_type}))
    except OSError:  # another process built the same tiny model at the same moment
        if not (out / "config.json").is_file():
            raise
    return out


def ensure_tiny(arch: str) -> Path:
    """The cached tiny model for an architecture name (llama, qwen2, mistral, ...)."""
    from transformers import CONFIG_MAPPING

    if arch not in CONFIG_MAPPING:
        from sdk.core.errors import SpecError

        raise SpecError(f"model.id: tiny:{arch}: unknown architecture (try tiny:llama, tiny:qwen2, tiny:mistral)")
    out = tiny_dir(arch)
    if not (out / "model.safetensors").is_file():
        import fcntl

        # The nodes and ranks of a cluster often share this cache (an NFS home): one builds, the rest wait.
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.parent / f".{out.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (out / "model.safetensors").is_file():
                build_tiny(out, {"model_type": arch})
    return out


def config_like(reference: str) -> dict[str, Any]:
    """The architecture config of a recipe, a config.json, or a model directory (no download)."""
    path = Path(reference).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json":
        return json.loads(path.read_text())
    from sdk.core.errors import SpecError
    from sdk.core.recipes import load_recipe

    spec = load_recipe(reference)
    if tiny_arch(spec.model.id):
        return {"model_type": tiny_arch(spec.model.id)}
    local = Path(spec.model.id).expanduser()
    if (local / "config.json").is_file():
        return json.loads((local / "config.json").read_text())
    from sdk.core.architectures import config_for

    config = config_for(spec.model.id)
    if config is None:
        raise SpecError(f"{reference}: no local config for {spec.model.id!r}; pass --like path/to/config.json")
    return config


def main(argv: list[str] | None = None) -> int:
    """`python -m launch.tiny OUT --like REF` (what `finetune tiny-model` runs: the client never builds a model)."""
    import argparse
    import sys

    from sdk.core.errors import FinetuneError

    parser = argparse.ArgumentParser(prog="python -m launch.tiny")
    parser.add_argument("out")
    parser.add_argument("--like", default="llama")
    args = parser.parse_args(argv)
    try:
        reference = Path(args.like).expanduser()
        if not reference.exists() and "/" not in args.like and not args.like.endswith((".yaml", ".yml", ".json")):
            from sdk.core.recipes import RECIPES_DIR

            config = config_like(args.like) if (RECIPES_DIR / f"{args.like}.yaml").is_file() else {"model_type": args.like}
        else:
            config = config_like(args.like)
        from transformers import CONFIG_MAPPING

        if config.get("model_type") not in CONFIG_MAPPING:
            raise ValueError(f"--like {args.like}: unknown architecture {config.get('model_type')!r} "
                             "(a recipe, a config.json, a model directory, or a name such as llama, qwen2, mistral)")
        path = build_tiny(Path(args.out), config)
    except (FinetuneError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"tiny {config.get('model_type')} model → {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
