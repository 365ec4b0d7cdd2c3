"""GPU decisions, each a function of the facts it depends on (GPU count, compute capability, installed
packages, strategy), so that every branch is unit-tested on a machine without a GPU. The node reads the
facts once (`read_cuda_facts`) and asks these functions; none of them imports torch.

    missing_gpu_error     a node that expects GPUs and finds none stops, naming torch, CUDA and driver
    attention_choice      flash-attention where installed and supported, else SDPA; an explicit ask is checked
    packing_choice        padding-free packing only where the attention keeps packed sequences apart
    device_map            where each rank's model goes: its own GPU, ZeRO-3's zero.Init, or the CPU
    quant_storage_dtype   4-bit weights stored in the compute dtype when ZeRO-3 / FSDP shard them
    save_route            FSDP saves through the Trainer (whole state dict), ZeRO-3 gathers, else rank 0 saves
    upcast_frozen_weights fp32 copies of a 4-bit model's 16-bit weights only under fp16
    activation_offloading saved activations in CPU memory by default for QLoRA with checkpointing on a GPU
    optimizer_name        fused AdamW on CUDA
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ALLOW_CPU = "FINETUNE_ALLOW_CPU"  # =1: train on the CPU although GPUs were asked for (tests, fake GPUs)
FLASH_MIN_CAPABILITY = (8, 0)  # flash-attention 2 needs Ampere or later


@dataclass(frozen=True)
class CudaFacts:
    available: bool
    device_count: int
    torch_version: str
    cuda_build: str | None  # CUDA version torch was built for; None for a CPU-only build
    driver: str | None  # NVIDIA driver version when nvidia-smi answers
    capability: tuple[int, int] | None = None


def read_cuda_facts() -> CudaFacts:
    import torch

    from launch.hardware import capability, driver_version

    available = torch.cuda.is_available()
    return CudaFacts(available=available, device_count=torch.cuda.device_count() if available else 0,
                     torch_version=torch.__version__, cuda_build=torch.version.cuda, driver=driver_version(),
                     capability=capability())


def expected_gpus(spec: Any, env: Mapping[str, str]) -> tuple[int, str]:
    """GPUs this node should have, and who says so: SkyPilot's SKYPILOT_NUM_GPUS_PER_NODE, else the spec."""
    from_sky = env.get("SKYPILOT_NUM_GPUS_PER_NODE")
    if from_sky and from_sky.strip().isdigit() and int(from_sky) > 0:
        return int(from_sky), f"SKYPILOT_NUM_GPUS_PER_NODE={from_sky}"
    if spec.resources.accelerators:
        wanted = ", ".join(f"{k}:{v}" for k, v in spec.resources.accelerators.items())
        return spec.resources.gpus_per_node, f"resources.accelerators {wanted}"
    return 0, "no accelerators asked for"


def missing_gpu_error(expected: int, why: str, facts: CudaFacts, env: Mapping[str, str]) -> str | None:
    """The error for a node that expects GPUs and finds fewer, or None when all is well (or the user
    said FINETUNE_ALLOW_CPU=1). Paying for GPU hours to train on the CPU is never silent."""
    if expected < 1 or env.get(ALLOW_CPU) == "1":
        return None
    if facts.available and facts.device_count >= expected:
        return None
    found = f"finds {facts.device_count} CUDA device(s)" if facts.available else "finds no CUDA device"
    build = f"built for CUDA {facts.cuda_build}" if facts.cuda_build else "a CPU-only build (no CUDA)"
    driver = f"NVIDIA driver {facts.driver}" if facts.driver else "no NVIDIA driver visible (nvidia-smi absent or failing)"
    return (f"this node expects {expected} GPU(s) ({why}) but torch {facts.torch_version} {found}: torch is {build}; "
            f"{driver}. Install a torch build that matches the driver, or set {ALLOW_CPU}=1 to train on the CPU on purpose")


def attention_choice(requested: str, *, cuda: bool, capability: tuple[int, int] | None,
                     flash_attn_installed: bool) -> tuple[str, str]:
    """(attn_implementation, why). `auto`: flash_attention_2 where it is installed and the GPU supports
    it, else PyTorch's SDPA. An explicit flash_attention_2 that cannot run is an error, not a fallback."""
    flash_ok = cuda and flash_attn_installed and capability is not None and tuple(capability) >= FLASH_MIN_CAPABILITY
    if requested == "flash_attention_2" and not flash_ok:
        reason = ("it needs a CUDA GPU" if not cuda else "the flash-attn package is not installed" if not flash_attn_installed
                  else f"it needs compute capability 8.0+, this GPU has {capability}")
        raise ValueError(f"train.attention: flash_attention_2 cannot run here: {reason}; use auto or sdpa")
    if requested != "auto":
        return requested, "as the spec says"
    if flash_ok:
        return "flash_attention_2", "flash-attn is installed and the GPU supports it"
    why = "no CUDA GPU" if not cuda else "flash-attn is not installed" if not flash_attn_installed else "GPU older than Ampere"
    return "sdpa", f"PyTorch SDPA ({why})"


def packing_choice(packing: bool, attention: str, *, packed_masks: bool) -> tuple[bool, bool, str | None]:
    """(pack, padding_free, note). Sequences packed into one row must not attend to each other.
    flash-attention keeps them apart from the position ids; SDPA and eager do too where the installed
    transformers builds a block-diagonal mask from position ids that restart (`packed_masks`: its
    masking_utils has find_packed_sequence_indices, 4.54+; trl's trainers pass use_cache=False, which
    that detection needs). Without either, packing would leak across sequences: train unpacked, say so."""
    if not packing:
        return False, False, None
    if attention == "flash_attention_2" or (packed_masks and attention in ("sdpa", "eager")):
        return True, True, None
    return False, False, (f"data.packing: packed sequences would attend to each other with {attention} attention "
                          "in this transformers; training unpacked (transformers>=4.54 or flash-attn keeps them apart)")


def transformers_packs_masks() -> bool:
    """Fact for packing_choice: does the installed transformers mask packed sequences apart for SDPA/eager?"""
    import importlib

    try:
        return hasattr(importlib.import_module("transformers.masking_utils"), "find_packed_sequence_indices")
    except ImportError:
        return False


def device_map(*, quantized: bool, cuda: bool, local_rank: int, zero3: bool) -> Any:
    """Where from_pretrained puts the model. Under ZeRO-3, zero.Init partitions it while loading (no
    device_map). On GPUs each rank's model goes to that rank's own GPU (DDP: never all on GPU 0). On the
    CPU a 4-bit model must be placed explicitly; a 16-bit one loads there anyway."""
    if zero3:
        return None
    if cuda:
        return {"": local_rank}
    return "cpu" if quantized else None


def quant_storage_dtype(compute_dtype: str, *, strategy: str, zero_stage: int | None) -> str | None:
    """bnb_4bit_quant_storage: ZeRO-3 and FSDP shard parameters as flat tensors of one dtype, so the
    packed 4-bit weights must be stored in the compute dtype instead of uint8."""
    sharded = strategy == "fsdp" or (strategy == "deepspeed" and zero_stage == 3)
    return compute_dtype if sharded else None


def save_route(*, strategy: str, world_size: int, artifact: str) -> str:
    """How the trained artifact is written. Under FSDP (transformers defaults to FSDP2) each rank holds
    shards, and a rank-0 save_pretrained would write rank 0's shard only: the Trainer's save_model
    gathers a whole state dict (a collective). ZeRO-3 gathers the trained parameters around the
    method's own save (launch.train.full_parameters). Elsewhere rank 0 saves directly."""
    if strategy == "fsdp" and world_size > 1:
        if artifact == "head_tensors":
            raise ValueError("method.name: head_only writes head tensors, which FSDP's whole-model save cannot; use ddp")
        return "trainer"
    return "gathered" if strategy == "deepspeed" else "direct"


def upcast_frozen_weights(dtype: str) -> bool:
    """Should a 4-bit model's frozen 16-bit weights (embeddings, norms, head) be copied to fp32, as peft's
    prepare_model_for_kbit_training does? Only for fp16, whose narrow range overflows in norms and
    logits. In bf16 the copy costs 2 B per parameter (2.1 GB for Llama-3.1-8B's embeddings and head)
    and makes the residual stream, and so every saved activation, fp32; RMSNorm already computes in fp32."""
    return dtype == "float16"


def activation_offloading(asked: bool | None, *, cuda: bool, quantized_base: bool, checkpointing: bool) -> bool:
    """Saved activations kept in pinned CPU memory until backward. By default only where memory is the
    point (a 4-bit base, already recomputing activations): the copies overlap compute on a side stream,
    but cost PCIe bandwidth. Needs CUDA streams: an explicit ask on a CPU node is an error."""
    if asked and not cuda:
        raise ValueError("train.activation_offloading: offloads GPU activations to the CPU; there is no GPU here")
    if asked is not None:
        return asked
    return cuda and quantized_base and checkpointing


def optimizer_name(requested: str, *, cuda: bool) -> str:
    """transformers' optimizer name: AdamW fused into one kernel on CUDA."""
    names = {"adamw_torch": "adamw_torch_fused" if cuda else "adamw_torch", "adamw_8bit": "adamw_bnb_8bit",
             "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit",
             "adafactor": "adafactor", "sgd": "sgd"}
    return names[requested]


def flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def allow_cpu(env: Mapping[str, str] | None = None) -> bool:
    return (env if env is not None else os.environ).get(ALLOW_CPU) == "1"
