"""Method registry: one registration per method name (peft style), no if/elif chains.

A method says how the base model is loaded (quantization), how it is made trainable (attach), and
how its trained artifact is saved and reloaded. Adapter methods save a PEFT directory that loads
with `PeftModel.from_pretrained`; `full` saves the whole model; `head_only` saves the head weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sdk.spec import FineTuneSpec

HEAD_FILE = "head.safetensors"
HEAD_META = "finetune_head.json"
# Projection names used by the common decoder families, to resolve target_modules="attention".
ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_attn", "c_proj", "query_key_value", "Wqkv", "out_proj", "dense")
FEEDFORWARD_NAMES = ("gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "w1", "w2", "w3", "dense_h_to_4h", "dense_4h_to_h", "mlp")


class Method(Protocol):
    name: str

    def quantization_config(self, spec: FineTuneSpec, compute_dtype: Any) -> Any | None: ...
    def attach(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any: ...
    def peft_config(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any | None: ...
    def save(self, model: Any, tokenizer: Any, out: Path) -> None: ...
    def reload(self, base: Any, artifact: Path) -> Any: ...


REGISTRY: dict[str, Method] = {}


def register(*names: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        for name in names:
            instance = cls()
            instance.name = name
            REGISTRY[name] = instance
        return cls

    return wrap


def get_method(name: str) -> Method:
    return REGISTRY[name]


def linear_module_names(model: Any) -> list[str]:
    """Leaf names of the Linear (and 4-bit Linear) layers below the output head."""
    import torch

    names = set()
    output = model.get_output_embeddings()
    for full_name, module in model.named_modules():
        if module is output:
            continue
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt", "Conv1D"):
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_targets(model: Any, target: Any, *, family: tuple[str, ...] = ATTENTION_NAMES) -> Any:
    """'all-linear' stays as peft understands it; 'attention' becomes the attention projections present."""
    if target == "all-linear" or isinstance(target, list):
        return target
    present = [n for n in linear_module_names(model) if n in family]
    if not present:
        raise ValueError(f"found no attention projections among {linear_module_names(model)}; list target_modules")
    return present


# ---------------------------------------------------------------------------------------- adapters


class _Method:
    """Defaults every method shares: a 16-bit (unquantized) base, no PEFT config, save_pretrained."""

    name = ""

    def quantization_config(self, spec: FineTuneSpec, compute_dtype: Any) -> Any | None:
        return None

    def peft_config(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any | None:
        return None

    def save(self, model: Any, tokenizer: Any, out: Path) -> None:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)


class _PeftMethod(_Method):
    """Shared by every method that trains a PEFT adapter."""

    def attach(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        from peft import get_peft_model

        if spec.train.gradient_checkpointing:
            model.enable_input_require_grads()
        return get_peft_model(model, self.peft_config(model, spec, tokenizer, source_path))

    def reload(self, base: Any, artifact: Path) -> Any:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, artifact)


@register("lora", "dora")
class LoraBuilder(_PeftMethod):
    def peft_config(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        from peft import LoraConfig

        m = spec.method
        return LoraConfig(
            task_type="CAUSAL_LM",
            r=m.r,
            lora_alpha=m.alpha,
            lora_dropout=m.dropout,
            target_modules=resolve_targets(model, m.target_modules),
            bias=m.bias,
            use_dora=m.use_dora,
            use_rslora=m.use_rslora,
            modules_to_save=m.modules_to_save or None,
        )


@register("qlora")
class QloraBuilder(LoraBuilder):
    def quantization_config(self, spec: FineTuneSpec, compute_dtype: Any) -> Any:
        from transformers import BitsAndBytesConfig

        m = spec.method
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=m.quant_type,
            bnb_4bit_use_double_quant=m.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
        )

    def attach(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        from peft import get_peft_model, prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.train.gradient_checkpointing)
        return get_peft_model(model, self.peft_config(model, spec, tokenizer, source_path))


@register("ia3")
class Ia3Builder(_PeftMethod):
    def peft_config(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        from peft import IA3Config

        linear = linear_module_names(model)
        target = spec.method.target_modules
        if target == "all-linear":
            target = linear
        elif target == "attention":
            target = resolve_targets(model, target)
        feedforward = [n for n in target if n in FEEDFORWARD_NAMES]
        return IA3Config(task_type="CAUSAL_LM", target_modules=target, feedforward_modules=feedforward)


@register("prompt_tuning")
class PromptTuningBuilder(_PeftMethod):
    def peft_config(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        from peft import PromptTuningConfig, PromptTuningInit

        m = spec.method
        if m.init_text:
            return PromptTuningConfig(
                task_type="CAUSAL_LM",
                num_virtual_tokens=m.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=m.init_text,
                tokenizer_name_or_path=source_path,
            )
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=m.num_virtual_tokens)


@register("prefix_tuning")
class PrefixTuningBuilder(_PeftMethod):
    def peft_config(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        from peft import PrefixTuningConfig

        m = spec.method
        return PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=m.num_virtual_tokens, prefix_projection=m.projection
        )


# ------------------------------------------------------------------------------------ whole weights


@register("full")
class FullBuilder(_Method):
    def attach(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def reload(self, base: Any, artifact: Path) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(artifact, dtype=next(base.parameters()).dtype)


@register("head_only")
class HeadOnlyBuilder(_Method):
    """Feature extraction: the body stays frozen, the output head trains. Saves only the head tensors."""

    def attach(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        for param in model.parameters():
            param.requires_grad_(False)
        heads = spec.method.head_modules
        found = False
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in heads:
                found = True
                for param in module.parameters():
                    param.requires_grad_(True)
        if not found:
            raise ValueError(f"method.head_modules: none of {heads} exists in the model")
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.float()  # the trained head (and its Adam states) in fp32
        return model

    def save(self, model: Any, tokenizer: Any, out: Path) -> None:
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(out / HEAD_FILE))
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        (out / HEAD_META).write_text(json.dumps({"method": "head_only", "parameters": names, "tied_embeddings": tied}))
        tokenizer.save_pretrained(out)

    def reload(self, base: Any, artifact: Path) -> Any:
        from safetensors.torch import load_file

        state = load_file(str(artifact / HEAD_FILE))
        missing = set(state) - {n for n, _ in base.named_parameters()}
        if missing:
            raise ValueError(f"{artifact}: head tensors {sorted(missing)} do not match the base model")
        base.load_state_dict(state, strict=False)
        return base

