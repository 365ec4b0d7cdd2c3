"""Method registry: one registration per fine-tuning method, the one home of per-method knowledge.

A `Method` says, in one place: its settings model (the `method:` section of a spec), the node-side
builder that loads and attaches it (named by import path, so this module imports no torch), its
trainable-parameter count for the planner, the objectives it trains with, whether and how its
artifact merges into the base, and what a serving engine needs to know. The client (spec
validation, planner, merge and serving preflight) and the node read the same registration.

    method         artifact          merges by         served as LoRA
    lora           PEFT adapter      adding BA         yes (rank r), unless modules_to_save
    dora           PEFT adapter      adding BA         no: engines lack DoRA, serve merged
    qlora          PEFT adapter      dequantize + add  yes (rank r), unless modules_to_save
    ia3            PEFT adapter      scaling           no: serve merged
    prompt/prefix  PEFT adapter      cannot            no: soft prompts are no weights
    full           whole model       (is the model)    no: it is a model of its own
    head_only      head tensors      loading the head  no: serve merged

Adding a method is one `register(Method(...))` below and, on the node, one builder class.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import Field, ValidationInfo, field_validator

from sdk.core.parts import SpecPart

if TYPE_CHECKING:
    from sdk.core.architectures import Shapes
    from sdk.core.spec import FineTuneSpec

# ------------------------------------------------------------------------------- settings models

# A string other than the keywords is a regular expression peft fullmatches against each module's full name
# (sdk.core.targets checks it against the model's module names before the run starts).
TargetModules = Union[Literal["all-linear", "attention"], list[str], str]


def _check_target(value: TargetModules) -> TargetModules:
    from sdk.core.targets import compile_error, is_pattern

    if isinstance(value, list) and not value:
        raise ValueError("must name at least one module, or be 'all-linear' / 'attention' / a regular expression")
    error = compile_error(value) if is_pattern(value) else None
    if error:
        raise ValueError(error)
    return value


class LoraSpec(SpecPart):
    name: Literal["lora"] = "lora"
    r: int = Field(16, ge=1, le=4096)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: TargetModules = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = False
    use_rslora: bool = False
    modules_to_save: list[str] = Field(default_factory=list)

    _target = field_validator("target_modules")(_check_target)


class DoraSpec(LoraSpec):
    """LoRA with weight decomposition (DoRA); same fields as lora."""

    name: Literal["dora"] = "dora"  # type: ignore[assignment]
    use_dora: Literal[True] = True


class QloraSpec(LoraSpec):
    """LoRA on a frozen base quantized by bitsandbytes: 4 bits (nf4, fp4: QLoRA) or 8 bits (int8: LLM.int8)."""

    name: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    quant_type: Literal["nf4", "fp4", "int8"] = Field(
        "nf4", description="nf4 / fp4: a 4-bit base (QLoRA); int8: an 8-bit base (LLM.int8, Axolotl's load_in_8bit)")
    double_quant: bool = Field(True, description="4-bit only: quantize the quantization constants too; int8 ignores "
                                                 "it (one fp32 scale per weight row, nothing to quantize again)")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"

    @field_validator("compute_dtype")
    @classmethod
    def _four_bit_only(cls, value: str, info: ValidationInfo) -> str:
        if value != "auto" and info.data.get("quant_type") == "int8":
            raise ValueError("sets a 4-bit base's compute dtype; an int8 base computes in the model's own dtype "
                             "(model.dtype, else train.precision): leave it auto")
        return value


class FullSpec(SpecPart):
    name: Literal["full"] = "full"


class HeadOnlySpec(SpecPart):
    """Feature extraction: freeze the body, train the output head (lm_head) only."""

    name: Literal["head_only"] = "head_only"
    head_modules: list[str] = Field(default_factory=lambda: ["lm_head"], min_length=1)


class PromptTuningSpec(SpecPart):
    name: Literal["prompt_tuning"] = "prompt_tuning"
    num_virtual_tokens: int = Field(20, ge=1, le=1024)
    init_text: str | None = Field(None, description="initialise the virtual tokens from this text (else random)")


class PrefixTuningSpec(SpecPart):
    name: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: int = Field(20, ge=1, le=1024)
    projection: bool = Field(False, description="reparameterise the prefix through an MLP")


class Ia3Spec(SpecPart):
    name: Literal["ia3"] = "ia3"
    target_modules: TargetModules = "all-linear"

    _target = field_validator("target_modules")(_check_target)


# ---------------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class Quantization:
    """How a quantized base stores and computes its frozen Linear weights (bitsandbytes)."""

    bits: int  # per stored weight
    # Also quantizes each matmul's input at run time (LLM.int8): no 16-bit model computes exactly the same,
    # so a merge is checked against the adapter on the dequantized base rather than on the quantized one.
    quantizes_inputs: bool = False


QUANTIZATION = {"nf4": Quantization(4), "fp4": Quantization(4), "int8": Quantization(8, quantizes_inputs=True)}

MergeKind = Literal[
    "adapter",  # merge_and_unload() into the 16-bit base
    "dequantized",  # dequantize the 4- or 8-bit base to 16 bits (the weights it trained against), then merge
    "load",  # the artifact holds trained weights of the base itself: load them into it
    "none",  # nothing to merge; `Method.merge_refusal` says why
]
Artifact = Literal["peft_adapter", "whole_model", "head_tensors"]


@dataclass(frozen=True)
class Serving:
    """What a serving engine (vLLM multi-LoRA) needs to know about one run's artifact."""

    as_lora: bool  # servable as a LoRA adapter on the shared base model
    lora_rank: int | None = None  # the engine's --max-lora-rank must be at least this
    reason: str | None = None  # why not as LoRA (then: serve a merged model, or not at all)


@dataclass(frozen=True)
class Method:
    name: str
    spec: type[SpecPart]
    builder: str  # "module:Class" of the node-side builder (launch.methods)
    artifact: Artifact
    trainable_params: Callable[[Any, Shapes], int]
    merge: MergeKind
    serving: Callable[[Any], Serving]
    merge_refusal: str | None = None
    soft_prompt: bool = False  # learns virtual tokens, not weights: trains only objectives that allow it
    gradient_checkpointing: bool = True
    quantized_base: bool = False  # the frozen base is quantized (bitsandbytes); how: `quantization`
    quantization: Callable[[Any], Quantization | None] = field(default=lambda m: None)
    trains_all_weights: bool = False  # trains the base's own weights rather than added parameters
    adds_parameters: bool = True  # trainable parameters live beside the base's (adapters)
    # Planner: activation bytes one layer adds per token (adapters keep their inputs for backward).
    activation_bytes: Callable[[Any, Shapes, int], int] = field(default=lambda m, shapes, act: 0)
    virtual_tokens: Callable[[Any], int] = field(default=lambda m: 0)  # tokens prepended to every sequence

    def load_builder(self) -> Any:
        """The node-side builder instance (imports torch and peft: node only)."""
        module, _, cls = self.builder.partition(":")
        return getattr(importlib.import_module(module), cls)()


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    REGISTRY[method.name] = method
    return method


def method_named(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no method {name!r}; registered: {', '.join(REGISTRY)}") from None


def method_of(spec: FineTuneSpec) -> Method:
    return method_named(spec.method.name)


def gradient_checkpointing(spec: FineTuneSpec) -> bool:
    """As the spec says; by default on for a quantized base (QLoRA trains big models on small GPUs), else off."""
    if spec.train.gradient_checkpointing is not None:
        return spec.train.gradient_checkpointing
    return method_of(spec).quantized_base and method_of(spec).gradient_checkpointing


# --------------------------------------------------------------------- planner facts per method

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
FEEDFORWARD = ("gate_proj", "up_proj", "down_proj")


def targeted(target: TargetModules, shapes: Shapes) -> dict[str, tuple[int, int]]:
    """The Linear layers (name -> in, out features) a target_modules setting selects in one block."""
    linears = shapes.linears()
    if target == "all-linear":
        return linears
    if isinstance(target, str) and target != "attention":  # a regex: matched as peft does, on Llama-style full names
        import re

        pattern = re.compile(target)
        # Every layer's names: a pattern picking some layers only counts as if it picked them in all (an upper bound).
        return {k: v for k, v in linears.items() if any(pattern.fullmatch(name) for name in _full_names(k, shapes))}
    names = ATTENTION if target == "attention" else target
    return {k: v for k, v in linears.items() if k in names}


def _full_names(leaf: str, shapes: Shapes) -> list[str]:
    block = "self_attn" if leaf in ATTENTION else "mlp"
    return [f"model.layers.{i}.{block}.{leaf}" for i in range(shapes.layers)]


def _lora_trainable(m: LoraSpec, shapes: Shapes) -> int:
    magnitude = 1 if m.use_dora else 0  # DoRA learns one magnitude per output feature
    per_layer = sum(m.r * (i + o) + magnitude * o for i, o in targeted(m.target_modules, shapes).values())
    return per_layer * shapes.layers


def _lora_activations(m: LoraSpec, shapes: Shapes, act: int) -> int:
    # Per token: the rank-r intermediate, and with dropout the dropped-out input copy and its mask.
    return sum(m.r * act + ((act + 1) * i if m.dropout > 0 else 0) for i, _o in targeted(m.target_modules, shapes).values())


def _lora_serving(m: LoraSpec) -> Serving:
    if m.use_dora:
        return Serving(False, reason="DoRA adapters (lora_magnitude_vector) are not supported by vLLM; serve it merged")
    if m.modules_to_save:
        return Serving(False, reason=f"modules_to_save {m.modules_to_save} are whole trained modules, which vLLM "
                                     "refuses in LoRA adapters; serve it merged")
    return Serving(True, lora_rank=m.r)


def _ia3_trainable(m: Ia3Spec, shapes: Shapes) -> int:
    # IA3 learns one vector per target: the input size for feed-forward modules, else the output size.
    per_layer = sum(i if k in FEEDFORWARD else o for k, (i, o) in targeted(m.target_modules, shapes).items())
    return per_layer * shapes.layers


def _prefix_trainable(m: PrefixTuningSpec, shapes: Shapes) -> int:
    per_token = 2 * shapes.layers * shapes.kv_heads * shapes.head_dim  # a key and a value per layer
    if m.projection:
        return m.num_virtual_tokens * shapes.h + shapes.h * shapes.h + shapes.h + shapes.h * per_token + per_token
    return m.num_virtual_tokens * per_token


SOFT_PROMPT = ("learns soft prompts, which are not weights of the base model: it cannot be merged; "
               "load the adapter with PeftModel.from_pretrained")


def _not_lora(reason: str) -> Callable[[Any], Serving]:
    return lambda m: Serving(False, reason=reason)


LORA = dict(builder="launch.methods:LoraBuilder", artifact="peft_adapter", trainable_params=_lora_trainable,
            merge="adapter", activation_bytes=_lora_activations, serving=_lora_serving)
register(Method(name="lora", spec=LoraSpec, **LORA))
register(Method(name="dora", spec=DoraSpec, **LORA))
register(Method(name="qlora", spec=QloraSpec, **{**LORA, "builder": "launch.methods:QloraBuilder", "merge": "dequantized"},
                quantized_base=True, quantization=lambda m: QUANTIZATION[m.quant_type]))
register(Method(name="ia3", spec=Ia3Spec, builder="launch.methods:Ia3Builder", artifact="peft_adapter",
                trainable_params=_ia3_trainable, merge="adapter",
                serving=_not_lora("IA3 scales activations; vLLM serves LoRA adapters only: serve it merged")))
register(Method(name="prompt_tuning", spec=PromptTuningSpec, builder="launch.methods:PromptTuningBuilder",
                artifact="peft_adapter", trainable_params=lambda m, shapes: m.num_virtual_tokens * shapes.h,
                merge="none", merge_refusal=SOFT_PROMPT, soft_prompt=True,
                virtual_tokens=lambda m: m.num_virtual_tokens,
                serving=_not_lora("prompt tuning learns soft prompts, which vLLM cannot serve and which cannot be merged")))
register(Method(name="prefix_tuning", spec=PrefixTuningSpec, builder="launch.methods:PrefixTuningBuilder",
                artifact="peft_adapter", trainable_params=_prefix_trainable, merge="none", merge_refusal=SOFT_PROMPT,
                soft_prompt=True, gradient_checkpointing=False, virtual_tokens=lambda m: m.num_virtual_tokens,
                serving=_not_lora("prefix tuning learns soft prompts, which vLLM cannot serve and which cannot be merged")))
register(Method(name="full", spec=FullSpec, builder="launch.methods:FullBuilder", artifact="whole_model",
                trainable_params=lambda m, shapes: shapes.total_params(), merge="load", trains_all_weights=True,
                adds_parameters=False,
                serving=_not_lora("a full fine-tune is a whole model, served as a model of its own, not as a LoRA adapter")))
register(Method(name="head_only", spec=HeadOnlySpec, builder="launch.methods:HeadOnlyBuilder", artifact="head_tensors",
                trainable_params=lambda m, shapes: shapes.vocab * shapes.h, merge="load", adds_parameters=False,
                serving=_not_lora("head-only training replaces the output head, which a LoRA engine cannot: serve it merged")))
