"""Method builders: how each registered method (sdk.core.methods) loads its base and attaches to it, node side.

A builder says how the base model is loaded (quantization), how it is made trainable (attach), and
how its trained artifact is saved and reloaded. Adapter methods save a PEFT directory that loads
with `PeftModel.from_pretrained`; `full` saves the whole model; `head_only` saves the head weights.
The registration in sdk.core.methods names the builder of each method; nothing here branches on names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

from sdk.core.methods import gradient_checkpointing
from sdk.core.spec import FineTuneSpec

HEAD_FILE = "head.safetensors"
# Projection names used by the common decoder families, to resolve target_modules="attention".
ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_attn", "c_proj", "query_key_value", "Wqkv", "out_proj", "dense")
FEEDFORWARD_NAMES = ("gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "w1", "w2", "w3", "dense_h_to_4h", "dense_4h_to_h", "mlp")


class MethodBuilder(Protocol):
    def quantization_config(self, spec: FineTuneSpec, compute_dtype: Any) -> Any | None: ...
    def attach(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any: ...
    def peft_config(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any | None: ...
    def save(self, model: Any, tokenizer: Any, out: Path) -> None: ...
    def reload(self, base: Any, artifact: Path) -> Any: ...


def builder_for(spec: FineTuneSpec) -> MethodBuilder:
    from sdk.core.methods import method_of

    return method_of(spec).load_builder()


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


def targetable_names(model: Any) -> list[str]:
    """Full names of the leaf modules peft can target: Linear (plain or bitsandbytes), Conv1D and Embedding."""
    import torch

    kinds = ("Linear4bit", "Linear8bitLt", "Conv1D")
    return [name for name, module in model.named_modules() if not list(module.children())
            and (isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) or type(module).__name__ in kinds)]


def resolve_targets(model: Any, target: Any, *, model_id: str, family: tuple[str, ...] = ATTENTION_NAMES) -> Any:
    """'all-linear' and a list stay as peft understands them; a regex too, once it matches a module (else the
    one-line SpecError sdk.core.targets words); 'attention' becomes the attention projections present."""
    from sdk.core.errors import SpecError
    from sdk.core.targets import is_pattern, pattern_error

    if target == "all-linear" or isinstance(target, list):
        return target
    if is_pattern(target):
        error = pattern_error(target, targetable_names(model), model_id)
        if error:
            raise SpecError(error)
        return target
    present = [n for n in linear_module_names(model) if n in family]
    if not present:
        raise ValueError(f"found no attention projections among {linear_module_names(model)}; list target_modules")
    return present


# ---------------------------------------------------------------------------------------- adapters


class _Builder:
    """Defaults every builder shares: a 16-bit (unquantized) base, no PEFT config, save_pretrained."""

    def quantization_config(self, spec: FineTuneSpec, compute_dtype: Any) -> Any | None:
        return None

    def peft_config(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any | None:
        return None

    def save(self, model: Any, tokenizer: Any, out: Path) -> None:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)


class _PeftBuilder(_Builder):
    """Shared by every method that trains a PEFT adapter."""

    def attach(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        from peft import get_peft_model

        if gradient_checkpointing(spec):
            model.enable_input_require_grads()
        return get_peft_model(model, self.peft_config(model, spec, tokenizer, source_path))

    def reload(self, base: Any, artifact: Path) -> Any:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, artifact)


class LoraBuilder(_PeftBuilder):
    def peft_config(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        from peft import LoraConfig

        m = spec.method
        return LoraConfig(
            task_type="CAUSAL_LM",
            r=m.r,
            lora_alpha=m.alpha,
            lora_dropout=m.dropout,
            target_modules=resolve_targets(model, m.target_modules, model_id=spec.model.id),
            bias=m.bias,
            use_dora=m.use_dora,
            use_rslora=m.use_rslora,
            modules_to_save=m.modules_to_save or None,
        )


class QloraBuilder(LoraBuilder):
    def quantization_config(self, spec: FineTuneSpec, compute_dtype: Any) -> Any:
        from transformers import BitsAndBytesConfig

        from launch.gpu import quant_storage_dtype
        from sdk.core.methods import method_of
        from sdk.core.precision import dtype_name, torch_dtype

        m = spec.method
        if method_of(spec).quantization(m).bits == 8:  # LLM.int8: a scale per row, computes in the model's dtype
            return BitsAndBytesConfig(load_in_8bit=True)
        storage = quant_storage_dtype(dtype_name(compute_dtype), strategy=spec.distributed.strategy,
                                      zero_stage=spec.distributed.zero_stage)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=m.quant_type,
            bnb_4bit_use_double_quant=m.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            **({"bnb_4bit_quant_storage": torch_dtype(storage)} if storage else {}),
        )

    def attach(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        from peft import get_peft_model, prepare_model_for_kbit_training

        from launch.gpu import upcast_frozen_weights
        from sdk.core.precision import dtype_name

        frozen = dtype_name(model.get_input_embeddings().weight.dtype)
        if upcast_frozen_weights(frozen):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing(spec))
        else:  # what prepare_model_for_kbit_training does, less its fp32 copy of embeddings, norms and head
            model.requires_grad_(False)
            if gradient_checkpointing(spec):
                model.enable_input_require_grads()
        return get_peft_model(model, self.peft_config(model, spec, tokenizer, source_path))


class Ia3Builder(_PeftBuilder):
    def peft_config(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        from peft import IA3Config

        from sdk.core.targets import is_pattern

        target = resolve_targets(model, spec.method.target_modules, model_id=spec.model.id)
        if target == "all-linear":
            target = linear_module_names(model)
        elif is_pattern(target):  # the full names it matches: IA3 must also be told which are feed-forward
            target = [n for n in targetable_names(model) if re.fullmatch(target, n)]
        feedforward = [n for n in target if n.rsplit(".", 1)[-1] in FEEDFORWARD_NAMES]
        return IA3Config(task_type="CAUSAL_LM", target_modules=target, feedforward_modules=feedforward)


class PromptTuningBuilder(_PeftBuilder):
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


class PrefixTuningBuilder(_PeftBuilder):
    def peft_config(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        from peft import PrefixTuningConfig

        m = spec.method
        return PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=m.num_virtual_tokens, prefix_projection=m.projection
        )


# ------------------------------------------------------------------------------------ whole weights


class FullBuilder(_Builder):
    def attach(self, model: Any, spec: FineTuneSpec, tokenizer: Any, source_path: str) -> Any:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def reload(self, base: Any, artifact: Path) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(artifact, dtype=next(base.parameters()).dtype)


class HeadOnlyBuilder(_Builder):
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
        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(out / HEAD_FILE))
        tokenizer.save_pretrained(out)

    def reload(self, base: Any, artifact: Path) -> Any:
        from safetensors.torch import load_file

        state = load_file(str(artifact / HEAD_FILE))
        missing = set(state) - {n for n, _ in base.named_parameters()}
        if missing:
            raise ValueError(f"{artifact}: head tensors {sorted(missing)} do not match the base model")
        base.load_state_dict(state, strict=False)
        return base

