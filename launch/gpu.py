"""GPU decisions, each a function of the facts it depends on (GPU count, compute capability, installed
packages, strategy), so that every branch is unit-tested on a machine without a GPU. The node reads the
facts once (`read_cuda_facts`) and asks these functions; none of them imports torch.

    missing_gpu_error     a node that expects GPUs and finds none stops, naming torch, CUDA and driver
    arch_error, bf16_error, gpu_count_error, memory_error
                          a GPU the node cannot use is refused before the model loads, naming the fix
    attention_choice      flash-attention where installed and supported, else SDPA; an explicit ask is checked
    layer_kinds           the kinds of sequence-mixing layers a model's config declares
    packing_choice        padding-free packing only where every layer is softmax attention kept apart
    device_map            where each rank's model goes: its own GPU, ZeRO-3's zero.Init, or the CPU
    quant_storage_dtype   4-bit weights stored in the compute dtype when ZeRO-3 / FSDP shard them
    save_route            FSDP saves through the Trainer (whole state dict), ZeRO-3 gathers, else rank 0 saves
    fsdp_settings         FSDP2 arguments and load environment (rank 0 reads, FSDP checkpointing); refused on CPU
    process_group_backend NCCL, with gloo beside it for FSDP-offloaded CPU tensors; gloo on CPU
    upcast_frozen_weights fp32 copies of a 4-bit model's 16-bit weights only under fp16
    activation_offloading saved activations in CPU memory by default for QLoRA where a benchmark showed it free
    optimizer_name        fused AdamW on CUDA
    rollout_choice        who generates a sampling objective's answers: vLLM colocated, a vLLM server, or transformers
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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
    arch_list: tuple[str, ...] = ()  # torch.cuda.get_arch_list(): the GPU code this torch build carries
    name: str | None = None
    free_bytes: int | None = None  # free memory on the first GPU when the node starts


def read_cuda_facts() -> CudaFacts:
    import torch

    from launch.hardware import capability, driver_version

    available = torch.cuda.is_available()
    return CudaFacts(available=available, device_count=torch.cuda.device_count() if available else 0,
                     torch_version=torch.__version__, cuda_build=torch.version.cuda, driver=driver_version(),
                     capability=capability(), arch_list=tuple(torch.cuda.get_arch_list()) if available else (),
                     name=torch.cuda.get_device_name(0) if available else None,
                     free_bytes=int(torch.cuda.mem_get_info(0)[0]) if available else None)


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


def arch_error(facts: CudaFacts) -> str | None:
    """A GPU this torch build has no code for: is_available() says True and the first kernel fails with "no
    kernel image is available" (a V100, sm_70, under a cu130 torch). CUDA runs sm_XY code on GPUs of the same
    major version and a minor version >= Y (sm_86 on an L4's 8.9), and PTX (compute_XY) of an older
    architecture on any newer GPU, compiled by the driver."""
    if not facts.available or facts.capability is None or not facts.arch_list:
        return None
    major, minor = facts.capability
    here = major * 10 + minor
    sm = {int(a[3:]) for a in facts.arch_list if a.startswith("sm_") and a[3:].isdigit()}
    ptx = {int(a[8:]) for a in facts.arch_list if a.startswith("compute_") and a[8:].isdigit()}
    if any(c // 10 == major and c % 10 <= minor for c in sm) or any(p <= here for p in ptx):
        return None
    return (f"GPU {facts.name or 0} (compute capability {major}.{minor}, sm_{here}) has no kernels in torch {facts.torch_version} "
            f"(built for {', '.join(facts.arch_list)}): pin a torch CUDA build that includes sm_{here} (cu126 builds keep "
            "Maxwell to Volta) or ask for a newer GPU in resources.accelerators")


def bf16_error(asked: str, facts: CudaFacts) -> str | None:
    """bf16 asked for by name on a GPU without bf16 arithmetic (before Ampere): precision auto picks fp16 there."""
    if asked != "bf16" or not facts.available or facts.capability is None or tuple(facts.capability) >= (8, 0):
        return None
    return (f"train.precision: bf16 needs compute capability 8.0+ (Ampere); GPU {facts.name or 0} has "
            f"{facts.capability[0]}.{facts.capability[1]}: use precision auto (fp16 with loss scaling) or an Ampere+ GPU")


def gpu_count_error(nproc_per_node: int | None, facts: CudaFacts) -> str | None:
    """More processes per node asked for than the node has GPUs: NCCL would put two ranks on one GPU."""
    if not facts.available or nproc_per_node is None or nproc_per_node <= facts.device_count:
        return None
    return (f"distributed.nproc_per_node: {nproc_per_node} processes on a node with {facts.device_count} GPU(s) "
            f"({facts.name}): ask for {nproc_per_node} GPUs in resources.accelerators or lower nproc_per_node")


# Refuse when free memory is below this share of the planner's estimate ("far below"): the one GPU point has the
# planner 25% high (5.23 vs 4.19 GiB measured), so 0.7 leaves room for that and more.
MEMORY_MARGIN = 0.7


def memory_error(needed_bytes: int | None, facts: CudaFacts) -> str | None:
    """Free GPU memory far below what the planner (sdk.core.plan) expects this run to need: an OOM minutes in,
    after the model has loaded. Within the planner's error (+25% on the one GPU point measured) it goes on."""
    if not facts.available or not needed_bytes or facts.free_bytes is None or facts.free_bytes >= MEMORY_MARGIN * needed_bytes:
        return None
    gib = 2**30
    return (f"GPU {facts.name or 0} has {facts.free_bytes / gib:.1f} GiB free, and this run needs about {needed_bytes / gib:.1f} GiB "
            "(finetune plan): a bigger GPU in resources.accelerators, method qlora, a smaller train.batch_size or "
            "data.max_length, or train.gradient_checkpointing: true")


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


# Layer kinds that are softmax attention over positions: a block-diagonal mask (or a varlen kernel) built
# from restarting position ids keeps packed rows apart there. Every other kind (linear attention, gated
# delta nets, state-space/Mamba mixers, short convolutions) carries state along the sequence and would
# leak one packed row into the next whatever the position ids say (transformers' padding-free guide).
SOFTMAX_LAYER_KINDS = frozenset({"full_attention", "sliding_attention", "chunked_attention", "attention", "global_attention",
                                 "local_attention"})
RECURRENT_MODEL_TYPES = frozenset({"mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm", "recurrent_gemma"})
# Config attributes that list a model's layer kinds: layer_types (transformers 5 gives it to most families,
# hybrids included), layers_block_type (older Jamba/Bamba/Zamba configs), hybrid_override_pattern (older
# Nemotron-H: M = Mamba, * = attention).
_PATTERN_KINDS = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}


def layer_kinds(config: Any) -> tuple[frozenset[str], str]:
    """(the kinds of sequence-mixing layers a model has, where that was read). A model whose config says
    nothing is a plain decoder of softmax attention layers."""
    model_type = str(getattr(config, "model_type", "") or "")
    if model_type in RECURRENT_MODEL_TYPES:
        return frozenset({"recurrent"}), f"model_type {model_type!r}"
    for attr in ("layer_types", "layers_block_type", "block_types"):
        kinds = getattr(config, attr, None)
        if isinstance(kinds, (list, tuple)) and kinds and all(isinstance(k, str) for k in kinds):
            # transformers names Mamba/gated-delta mixers "linear_attention" and attention beside a Mamba
            # mixer "hybrid" (Falcon-H1, Zamba): neither is in SOFTMAX_LAYER_KINDS.
            return frozenset(k.lower() for k in kinds), f"{type(config).__name__}.{attr}"
    pattern = getattr(config, "hybrid_override_pattern", None)
    if isinstance(pattern, str) and pattern:
        return frozenset(_PATTERN_KINDS.get(c, c) for c in pattern) - {"mlp", "moe"}, f"{type(config).__name__}.hybrid_override_pattern"
    return frozenset({"full_attention"}), "a decoder of attention layers (its config lists no other kind)"


def packing_choice(packing: bool, attention: str, *, packed_masks: bool,
                   kinds: frozenset[str] = frozenset({"full_attention"}), kinds_from: str = "") -> tuple[bool, bool, str | None]:
    """(pack, padding_free, note). Sequences packed into one row must not attend to each other.
    Only softmax attention layers can be kept apart by position ids: flash-attention's varlen kernel does
    it from them, and SDPA and eager do too where the installed transformers builds a block-diagonal mask
    from position ids that restart (`packed_masks`: its masking_utils has find_packed_sequence_indices,
    4.54+; trl's trainers pass use_cache=False, which that detection needs). A model with any other kind
    of layer (`kinds`, from layer_kinds) trains padded, and the note says why."""
    if not packing:
        return False, False, None
    other = sorted(kinds - SOFTMAX_LAYER_KINDS)
    if other:
        return False, False, (f"data.packing: this model has {', '.join(other)} layers ({kinds_from}), which carry state "
                              "across packed rows whatever the position ids say; training padded, unpacked")
    if attention == "flash_attention_2" or (packed_masks and attention in ("sdpa", "eager")):
        return True, True, None
    return False, False, (f"data.packing: packed sequences would attend to each other with {attention} attention "
                          "in this transformers; training padded, unpacked (transformers>=4.54 or flash-attn keeps them apart)")


def transformers_packs_masks() -> bool:
    """Fact for packing_choice: does the installed transformers mask packed sequences apart for SDPA/eager?"""
    import importlib

    try:
        return hasattr(importlib.import_module("transformers.masking_utils"), "find_packed_sequence_indices")
    except ImportError:
        return False


def device_map(*, quantized: bool, cuda: bool, local_rank: int, zero3: bool, fsdp: bool = False) -> Any:
    """Where from_pretrained puts the model. Under ZeRO-3 no device_map at all (from_pretrained refuses
    one): zero.Init partitions a 16-bit model while loading, and bitsandbytes puts a 4-bit one on the
    rank's current device, set to its own GPU when the process group started. Under FSDP the model loads
    on the CPU and FSDP moves each rank's shards to its GPU. On GPUs each rank's model goes to that rank's
    own GPU (DDP: never all on GPU 0). On the CPU a 4-bit model must be placed explicitly; a 16-bit one
    loads there anyway."""
    if zero3 or fsdp:
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
    if strategy == "fsdp":
        if artifact == "head_tensors":
            raise ValueError("method.name: head_only writes head tensors, which FSDP's whole-model save cannot; use ddp")
        return "trainer"
    return "gathered" if strategy == "deepspeed" else "direct"


def fsdp_settings(*, cuda: bool, world_size: int, checkpointing: bool,
                  offload: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """(TrainingArguments, environment for the model load) for FSDP, as transformers' FSDP2 takes them: the
    boolean `fsdp` with everything in fsdp_config (the "full_shard auto_wrap" string is deprecated, and
    use_orig_params / sync_module_states are FSDP1 options that FSDP2 ignores); each decoder layer its own
    unit; rank 0 alone reads the checkpoint and the others build on the meta device
    (cpu_ram_efficient_loading, which transformers reads from the environment at from_pretrained, so the
    node sets it before the load); a whole state dict gathered on save; activation checkpointing through
    FSDP, which transformers prefers to the Trainer's flag under FSDP. `offload`: fsdp_config cpu_offload, which
    accelerate turns into FSDP2's CPUOffloadPolicy (parameters, gradients and the optimizer step on the CPU), and
    FSDP_OFFLOAD_PARAMS, which makes accelerate start the process group as cuda:nccl,cpu:gloo for the collectives
    over offloaded tensors (the gradient norm) — read when the group starts, so set at any world size.

    CPU: accelerate turns FSDP on only for GPU-like distributed types (accelerate/state.py: MULTI_GPU,
    MULTI_NPU, ...); a CPU run is MULTI_CPU and would silently train plain DDP, so it is an error."""
    if not cuda:
        raise ValueError("distributed.strategy: fsdp needs GPUs (accelerate runs FSDP only on accelerators and would "
                         "silently train plain DDP on the CPU); on CPU use ddp or deepspeed")
    config: dict[str, Any] = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True,
                              "state_dict_type": "FULL_STATE_DICT", "cpu_ram_efficient_loading": True}
    args: dict[str, Any] = {"fsdp": True, "fsdp_config": config}
    if checkpointing:
        config["activation_checkpointing"] = True
        args["gradient_checkpointing"] = False  # FSDP's own checkpoint wrapper instead (one recompute, not two)
    # One process is FSDP too (one GPU proves the wrapping); rank-0-only loading only helps with several.
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"} if world_size > 1 else {}
    config["cpu_ram_efficient_loading"] = world_size > 1
    if offload:
        config["cpu_offload"] = True
        env.update({"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"})
    return args, env


def process_group_backend(*, cuda: bool, cpu_collectives: bool) -> str:
    """The backend the node starts its process group with (the Trainer reuses the group). FSDP's CPU offload keeps
    gradients on the CPU, and NCCL reduces only CUDA tensors: such CPU tensors go through gloo in the same group."""
    if not cuda:
        return "gloo"
    return "cuda:nccl,cpu:gloo" if cpu_collectives else "nccl"


def upcast_frozen_weights(dtype: str) -> bool:
    """Should a 4-bit model's frozen 16-bit weights (embeddings, norms, head) be copied to fp32, as peft's
    prepare_model_for_kbit_training does? Only for fp16, whose narrow range overflows in norms and
    logits. In bf16 the copy costs 2 B per parameter (2.1 GB for Llama-3.1-8B's embeddings and head)
    and makes the residual stream, and so every saved activation, fp32; RMSNorm already computes in fp32."""
    return dtype == "float16"


# Where a benchmark showed activation offloading costs no throughput (compute capability -> the evidence).
# Elsewhere it is off unless asked for: it trades PCIe bandwidth for memory, and on Gen4 PCIe cards
# (L4, A10G) that trade is unmeasured. With non-reentrant checkpointing the checkpointed inputs stay on
# the GPU, so what it saves is the rest (the LoRA branch, norms, the loss), not the checkpoints.
OFFLOADING_MEASURED: dict[tuple[int, int], str] = {
    (9, 0): "H100 SXM, QLoRA 1.1B, batch 8 x 1024: 9,960 vs 9,935 tokens/s, peak 2.18 vs 2.76 GiB "
            "(tests/bench/results/bench_gpu-h100.txt)",
}


def activation_offloading(asked: bool | None, *, cuda: bool, quantized_base: bool, checkpointing: bool,
                          capability: tuple[int, int] | None = None) -> bool:
    """Saved activations kept in pinned CPU memory until backward. By default only where memory is the
    point (a 4-bit base, already recomputing activations) and on a GPU where a benchmark showed the
    copies overlapping compute at no cost (OFFLOADING_MEASURED). Needs CUDA streams: an explicit ask on
    a CPU node is an error."""
    if asked and not cuda:
        raise ValueError("train.activation_offloading: offloads GPU activations to the CPU; there is no GPU here")
    if asked is not None:
        return asked
    measured = capability is not None and tuple(capability) in OFFLOADING_MEASURED
    return cuda and quantized_base and checkpointing and measured


def optimizer_name(requested: str, *, cuda: bool) -> str:
    """transformers' optimizer name: AdamW fused into one kernel on CUDA."""
    names = {"adamw_torch": "adamw_torch_fused" if cuda else "adamw_torch", "adamw_8bit": "adamw_bnb_8bit",
             "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit",
             "adafactor": "adafactor", "sgd": "sgd"}
    return names[requested]


# The launcher sets this when it started a vLLM server for the run's rollouts (launch.launcher.vllm_server_command).
VLLM_SERVER_URL = "FINETUNE_VLLM_SERVER_URL"
VLLM_PORT = 8000  # trl's default vllm_server_port
# PyPI's vLLM is a CUDA 13 build: the node installs it only beside a CUDA 13 torch (sdk.backends.node_setup).
_NO_VLLM = "the node installs vLLM only where its torch is a CUDA 13 build (NVIDIA driver >= 580)"


def rollout_choice(asked: str, *, cuda: bool, vllm_installed: bool, gpus_on_node: int, nodes: int,
                   server_url: str | None = None) -> tuple[dict[str, Any], str]:
    """(GRPOConfig kwargs, why) for who generates the answers (objective.rollouts). auto: vLLM colocated on CUDA where
    vllm is installed, else transformers' generate. vllm_colocate and vllm_server need both; vllm_server also one
    node with 2+ GPUs: the launcher serves on the last and trains on the others. `server_url` is the server the
    launcher started (VLLM_SERVER_URL): its GPU is already set aside, so the training GPUs are not counted again."""
    if asked == "transformers":
        return {"use_vllm": False}, "transformers generate (objective.rollouts: transformers)"
    if asked == "auto":
        if cuda and vllm_installed:
            return {"use_vllm": True, "vllm_mode": "colocate"}, "vLLM colocated (auto: a CUDA GPU and vllm installed)"
        why = "no CUDA GPU" if not cuda else f"vllm is not installed here; {_NO_VLLM}"
        return {"use_vllm": False}, f"transformers generate (auto: {why})"
    if asked not in ("vllm_colocate", "vllm_server"):
        raise ValueError(f"objective.rollouts: {asked!r} is not one of auto, transformers, vllm_colocate, vllm_server")
    if not cuda:
        raise ValueError(f"objective.rollouts: {asked} needs a CUDA GPU and this node has none; use rollouts: "
                         "transformers (auto picks it on CPU)")
    if not vllm_installed:
        raise ValueError(f"objective.rollouts: {asked} needs vLLM, which is not installed on this node ({_NO_VLLM}); "
                         "use rollouts: auto or transformers, or resources.image with such a driver")
    if asked == "vllm_colocate":
        return {"use_vllm": True, "vllm_mode": "colocate"}, "vLLM colocated (objective.rollouts: vllm_colocate)"
    if nodes > 1:
        raise ValueError(f"objective.rollouts: vllm_server serves from one GPU of a single-node run; this run has "
                         f"{nodes} nodes: use vllm_colocate")
    if server_url is None and gpus_on_node < 2:
        raise ValueError(f"objective.rollouts: vllm_server needs 2+ GPUs on the node (one serves, the others train); "
                         f"this node has {gpus_on_node}: ask for more in resources.accelerators, or use vllm_colocate")
    url = server_url or f"http://127.0.0.1:{VLLM_PORT}"
    parts = urlsplit(url)
    kwargs = {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": url,
              "vllm_server_host": parts.hostname or "127.0.0.1", "vllm_server_port": parts.port or VLLM_PORT}
    return kwargs, f"a vLLM server at {url} on its own GPU (objective.rollouts: vllm_server)"


def vllm_installed() -> bool:
    """Fact for rollout_choice."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def allow_cpu(env: Mapping[str, str] | None = None) -> bool:
    return (env if env is not None else os.environ).get(ALLOW_CPU) == "1"


def fsdp_load_environment(strategy: str, *, offload: bool = False) -> dict[str, str]:
    """Under FSDP on GPUs rank 0 alone reads the checkpoint (the others build on the meta device and receive the
    weights when FSDP wraps the model): transformers reads that from the environment. Nothing for other strategies."""
    import torch

    from launch import ranks

    if strategy == "fsdp" and torch.cuda.is_available():
        return fsdp_settings(cuda=True, world_size=ranks.world_size(), checkpointing=False, offload=offload)[1]
    return {}
