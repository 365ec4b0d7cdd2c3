"""Architecture facts without downloads: a small registry of public model configs, local config.json
files, and exact parameter counts for Llama-style decoders (llama, mistral, qwen2).

The registry holds the fields of each model's public config.json that decide its shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The tiny models `tiny:<arch>` builds (launch.tiny): shapes shared by client and node.
TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_VOCAB = 512
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% if m['role'] == 'assistant' %}<|end|>{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_LLAMA31 = {"model_type": "llama", "vocab_size": 128256, "max_position_embeddings": 131072, "tie_word_embeddings": False,
            "num_attention_heads": None, "num_key_value_heads": 8, "attention_bias": False, "mlp_bias": False}

REGISTRY: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B": {**_LLAMA31, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                "num_attention_heads": 32},
    "meta-llama/Llama-3.1-70B": {**_LLAMA31, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                                 "num_attention_heads": 64},
    "Qwen/Qwen2.5-0.5B": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                          "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                          "tie_word_embeddings": True, "max_position_embeddings": 32768},
    "Qwen/Qwen2.5-7B": {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                        "tie_word_embeddings": False, "max_position_embeddings": 131072},
    "mistralai/Mistral-7B-v0.1": {"model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                  "tie_word_embeddings": False, "max_position_embeddings": 32768},
    "mistralai/Mistral-7B-v0.3": {"model_type": "mistral", "vocab_size": 32768, "hidden_size": 4096, "intermediate_size": 14336,
                                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                  "tie_word_embeddings": False, "max_position_embeddings": 32768},
    "HuggingFaceTB/SmolLM2-135M": {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                                   "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                                   "tie_word_embeddings": True, "max_position_embeddings": 8192},
}
# Instruct / chat variants share their base model's shapes.
ALIASES = {
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "meta-llama/Meta-Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.1-70B-Instruct": "meta-llama/Llama-3.1-70B",
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistralai/Mistral-7B-v0.3",
    "mistralai/Mistral-7B-Instruct-v0.1": "mistralai/Mistral-7B-v0.1",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M",
}


def config_for(model_id: str) -> dict[str, Any] | None:
    """The architecture config for a model id, a local dir / config.json, a GGUF name, or tiny:<arch>."""
    from sdk.core.modelref import tiny_arch

    arch = tiny_arch(model_id)
    if arch:
        return {"model_type": arch, **TINY_SHAPE, "num_key_value_heads": TINY_SHAPE["num_attention_heads"],
                "vocab_size": TINY_VOCAB, "tie_word_embeddings": False}
    path = Path(model_id).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text())
    if path.suffix == ".json" and path.is_file():
        return json.loads(path.read_text())
    key = ALIASES.get(model_id, model_id)
    if key in REGISTRY:
        return dict(REGISTRY[key])
    lowered = {k.lower(): k for k in [*REGISTRY, *ALIASES]}
    if model_id.lower() in lowered:
        return config_for(lowered[model_id.lower()])
    # A file name (GGUF, pkg://…) that names a known model: SmolLM2-135M-Instruct.Q4_1.gguf
    stem = Path(model_id).name.split(".")[0].lower()
    for name in REGISTRY:
        if stem and stem.startswith(name.split("/")[-1].lower()):
            return dict(REGISTRY[name])
    return None


class Shapes:
    """The shapes of a Llama-style decoder, read from a config dict."""

    def __init__(self, cfg: dict[str, Any]):
        self.model_type = cfg.get("model_type", "llama")
        self.h = int(cfg["hidden_size"])
        self.layers = int(cfg["num_hidden_layers"])
        self.heads = int(cfg["num_attention_heads"])
        self.kv_heads = int(cfg.get("num_key_value_heads") or self.heads)
        self.head_dim = int(cfg.get("head_dim") or self.h // self.heads)
        self.inter = int(cfg["intermediate_size"])
        self.vocab = int(cfg["vocab_size"])
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        # qwen2 puts biases on q, k, v (not o); llama/mistral use attention_bias for all four.
        self.qkv_bias = self.model_type == "qwen2" or bool(cfg.get("attention_bias", False))
        self.o_bias = self.model_type != "qwen2" and bool(cfg.get("attention_bias", False))
        self.mlp_bias = bool(cfg.get("mlp_bias", False))

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of every Linear in one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (self.h, q), "k_proj": (self.h, kv), "v_proj": (self.h, kv), "o_proj": (q, self.h),
            "gate_proj": (self.h, self.inter), "up_proj": (self.h, self.inter), "down_proj": (self.inter, self.h),
        }

    def linear_params(self) -> int:
        """Weights of the decoder layers' Linear modules (what 4-bit quantization stores), all layers."""
        return self.layers * sum(i * o for i, o in self.linears().values())

    def total_params(self) -> int:
        per_layer = self.linear_params() // self.layers + 2 * self.h  # + two RMSNorms
        lin = self.linears()
        if self.qkv_bias:
            per_layer += lin["q_proj"][1] + lin["k_proj"][1] + lin["v_proj"][1]
        if self.o_bias:
            per_layer += self.h
        if self.mlp_bias:
            per_layer += 2 * self.inter + self.h
        embed = self.vocab * self.h
        return embed + self.layers * per_layer + self.h + (0 if self.tied else embed)
