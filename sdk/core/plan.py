"""Planner: per-GPU memory by component, which GPUs fit, and what they cost — from the spec alone.

Bytes per component (N = data-parallel world size, P = total params, T = trainable params):
  frozen weights   16-bit: 2·P (full fine-tuning: fp32 master weights, 4·P) · NF4/FP4: 0.5 B per Linear weight + quantization constants
                   (fp32 absmax per 64 → 0.5 bit/param; double quant: 8-bit absmax + fp32 per 256 blocks
                   → 0.127 bit/param) · int8 (LLM.int8): 1 B per Linear weight + an fp32 scale per row;
                   embeddings, norms and head kept in 16-bit
  trainable        adapters in fp32 at every precision, QLoRA's too (sdk.core.precision.trainable_dtype)
  gradients        T in the trainable dtype
  optimizer        AdamW 2 states in the parameter's dtype; 8-bit: 2 B/param; SGD: 0; Adafactor ≈ 0.5 B/param
                   DeepSpeed: fp32 master + 2 states = 12 B/param, sharded over N from ZeRO-1 on
  activations      per layer per token (Llama-style, SDPA attention): (6h + 2·kv + 4·I) values saved
                   for backward, + fp32 RMSNorm intermediates, + a copy of each LoRA input when dropout > 0;
                   with gradient checkpointing only each layer's input, + one layer recomputed
  logits           s·b·V·(a + 4 + 4): the logits, their fp32 up-cast and the fp32 log-softmax for the loss
  attention (CPU)  SDPA's backward holds the s² scores and their gradient for one layer (not on CUDA)
  runtime          CUDA context and allocator slack (not part of max_memory_allocated)
Sharding: DDP replicates everything; ZeRO-2 shards grads + optimizer; ZeRO-3 / FSDP also parameters.
FSDP CPU offload: weights, gradients and optimizer in CPU memory; a GPU holds the units computing (offload_plan).

Objectives (sdk.core.objective_plan): preference pairs double activations and logits; a reference forward adds its
logits (and a copy of the weights where no adapter can be disabled); rollouts (grpo) train on prompt + completion
tokens and add generation's memory: transformers' KV cache, a colocated vLLM's share of EVERY GPU's memory (a GPU fits
when training + share × its memory fits in it), or a vLLM server on each node's last GPU, which does not train.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sdk.core.architectures import Shapes, config_for
from sdk.core.errors import SpecError
from sdk.core.methods import gradient_checkpointing, method_of
from sdk.core.objective_plan import (
    SERVER_SHARE,
    ObjectivePlan,
    colocated_part,
    decode_seconds,
    kv_bytes_per_token,
    objective_plan,
    reference_parts,
    rollout_parts,
    sequences_note,
)
from sdk.core.offload_plan import offloaded_parts
from sdk.core.precision import BYTES, DTYPE_OF, resolve_precision, trainable_dtype, weight_dtype
from sdk.core.spec import FineTuneSpec
from sdk.objectives import objective_of

GiB = 1024**3
CUDA_CONTEXT = int(0.6 * GiB)

# Common cloud GPUs and their memory (GB as sold). Order: smallest first.
GPUS: dict[str, int] = {
    "T4": 16, "V100": 16, "L4": 24, "A10G": 24, "RTX4090": 24, "A10": 24, "V100-32GB": 32, "A100": 40,
    "L40S": 48, "A40": 48, "RTX6000-Ada": 48, "A100-80GB": 80, "H100": 80, "H200": 141, "B200": 180,
}

class Component(BaseModel):
    name: str
    bytes: int
    note: str = ""


class GpuFit(BaseModel):
    gpu: str
    memory_gb: int
    fits: bool
    headroom_gb: float
    hourly_usd: float | None = None


class MemoryEstimate(BaseModel):
    model: str
    method: str
    device: str
    total_params: int
    trainable_params: int
    world_size: int
    seq_len: int
    micro_batch: int
    components: list[Component]
    allocated_bytes: int  # comparable with torch.cuda.max_memory_allocated()
    required_bytes: int  # allocated + runtime overhead: what a GPU must hold
    fits: list[GpuFit]

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0


def trainable_params(spec: FineTuneSpec, shapes: Shapes) -> int:
    return method_of(spec).trainable_params(spec.method, shapes)


@dataclass(frozen=True)
class _Facts:
    """What every component of the estimate is computed from."""

    spec: FineTuneSpec
    shapes: Shapes
    method: Any
    device: str
    precision: str  # bf16 | fp16 | fp32, as the planner resolves it for the device
    act: int  # bytes per activation value
    weight: int  # bytes per weight value
    seq: int
    batch: int
    total: int
    trainable: int
    world: int
    deepspeed: bool
    shard_params: int  # how many ways weights and trainable params are split (ZeRO-3, FSDP)
    shard_states: int  # how many ways gradients and optimizer states are split (ZeRO-1/2/3)
    obj: ObjectivePlan  # what the objective adds: sequences per row, a reference forward, rollouts


def _facts(spec: FineTuneSpec, *, device: str, seq_len: int | None, micro_batch: int | None,
           config: dict[str, Any] | None) -> _Facts:
    config = config or config_for(spec.model.id)
    if config is None:
        raise SpecError(f"model.id: no architecture known for {spec.model.id!r}; give a local model directory "
                        "(with config.json) or one of the registry's models (finetune estimate --help)")
    try:
        shapes = Shapes(config)
    except KeyError as exc:
        raise SpecError(f"model.id: config of {spec.model.id!r} lacks {exc.args[0]!r}") from None
    # The planner assumes a GPU with native bf16 (compute capability 8.0+), as the cloud GPUs it lists.
    precision = resolve_precision(spec.train.precision, capability=(8, 0) if device == "gpu" else None)
    dist = spec.distributed
    obj = objective_plan(objective_of(spec).plan, spec.objective, device=device, prompt=seq_len or spec.data.max_length)
    world = spec.resources.nodes * max(1, spec.resources.gpus_per_node - obj.serving_gpus) if device == "gpu" else 1
    deepspeed = dist.strategy == "deepspeed"
    stage = dist.zero_stage if deepspeed else (3 if dist.strategy == "fsdp" else 0)
    return _Facts(spec=spec, shapes=shapes, method=method_of(spec), device=device, precision=precision, act=BYTES[DTYPE_OF[precision]],
                  weight=BYTES[weight_dtype(spec, precision)], seq=obj.seq,
                  batch=micro_batch or spec.train.batch_size, total=shapes.total_params(),
                  trainable=trainable_params(spec, shapes), world=world, deepspeed=deepspeed,
                  shard_params=world if stage == 3 else 1,
                  shard_states=world if stage >= 2 or (deepspeed and stage >= 1) else 1, obj=obj)


def _weights(f: _Facts) -> list[Component]:
    spec = f.spec
    if not f.method.quantized_base:
        return [Component(name="weights", bytes=f.total * f.weight // f.shard_params, note=f"{f.total:,} params × {f.weight} B")]
    linear = f.shapes.linear_params()
    bits = f.method.quantization(spec.method).bits
    if bits == 8:  # LLM.int8: one fp32 scale per output row of each weight
        rows = f.shapes.layers * sum(o for _i, o in f.shapes.linears().values())
        quantized, constants = linear + 4 * rows, "an fp32 scale per row"
    else:
        per_block = (1 / 64 + 4 / (64 * 256)) if spec.method.double_quant else 4 / 64
        quantized = int(linear * (0.5 + per_block))
        constants = f"{'double-quantized ' if spec.method.double_quant else ''}constants"
    rest = (f.total - linear) * f.weight
    # transformers loads a quantized model outside zero.Init (DeepSpeed#5660): each rank holds it whole until the
    # engine partitions it, so that is what must fit.
    whole = "; whole on each rank at load (DeepSpeed#5660)" if f.shard_params > 1 else ""
    return [Component(name=f"weights ({bits}-bit)", bytes=quantized,
                      note=f"{linear:,} Linear params at {bits} bits + {constants}{whole}"),
            Component(name="weights (16-bit rest)", bytes=rest, note=f"embeddings, norms, head{whole}")]


def _optimizer_bytes(optimizer: str, *, deepspeed: bool, param_bytes: int) -> tuple[float, str]:
    """Bytes of optimizer state per trainable parameter, and how."""
    if deepspeed:
        return 12, "DeepSpeed fp32 master + Adam m, v"
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        return 2, f"{optimizer}: 2 × 1 B states"
    if optimizer == "sgd":
        return 0, "SGD without momentum"
    if optimizer == "adafactor":
        return 0.5, "factored second moment (approx.)"
    state = 4 if optimizer == "paged_adamw_32bit" else param_bytes
    return 2 * state, f"AdamW m, v at {state} B"


def _training_state(f: _Facts, precision_bytes: int) -> list[Component]:
    parts = []
    if f.method.adds_parameters:  # trained weights of the base itself are counted with the weights
        parts.append(Component(name="trainable params", bytes=f.trainable * precision_bytes // f.shard_params,
                               note=f"{f.trainable:,} × {precision_bytes} B"))
    parts.append(Component(name="gradients", bytes=f.trainable * precision_bytes // f.shard_states, note=f"{precision_bytes} B each"))
    opt_bytes, note = _optimizer_bytes(f.spec.train.optimizer, deepspeed=f.deepspeed, param_bytes=precision_bytes)
    parts.append(Component(name="optimizer", bytes=int(f.trainable * opt_bytes) // f.shard_states, note=note))
    return parts


def _activations(f: _Facts) -> list[Component]:
    shapes, act, s, b = f.shapes, f.act, f.seq, f.batch
    h, inter, kv = shapes.h, shapes.inter, shapes.kv_heads * shapes.head_dim
    tokens = s * b * f.obj.seqs
    norm_fp32 = 2 * (8 if act == 2 else 4) * h  # HF RMSNorm computes in fp32 and keeps its intermediates
    per_layer = tokens * (act * (6 * h + 2 * kv + 4 * inter) + norm_fp32)
    per_layer += tokens * f.method.activation_bytes(f.spec.method, shapes, act)
    if gradient_checkpointing(f.spec):
        activations = shapes.layers * tokens * h * act + per_layer
        note = f"checkpointed: {shapes.layers} layer inputs + one layer recomputed"
    else:
        activations = shapes.layers * per_layer
        note = f"{shapes.layers} layers × {tokens:,} tokens"
    virtual = f.method.virtual_tokens(f.spec.method)
    if virtual:  # soft prompts lengthen every sequence
        activations = activations * (s + virtual) // s
    parts = [Component(name="activations", bytes=int(activations), note=note + sequences_note(f.obj)),
             Component(name="logits", bytes=tokens * shapes.vocab * (act + 4 + 4),
                       note=f"{tokens:,} tokens × {shapes.vocab:,} vocab" + sequences_note(f.obj))]
    if f.device == "cpu":
        # CPU SDPA's backward materialises the attention matrix and its gradient, one layer at a time;
        # CUDA's flash / memory-efficient kernels never hold the s² matrix.
        parts.append(Component(name="attention workspace", bytes=2 * b * f.obj.seqs * shapes.heads * s * s * 4,
                               note="CPU SDPA backward: scores + their gradient, one layer"))
    return parts



def _objective_parts(f: _Facts) -> list[Component]:
    """A reference forward's and the rollouts' memory (sdk.core.objective_plan)."""
    adapter = f.method.artifact == "peft_adapter"
    parts = reference_parts(f.obj, tokens=f.seq * f.batch * f.obj.seqs, vocab=f.shapes.vocab, act=f.act,
                            adapter=adapter, copy_bytes=f.total * f.weight // f.shard_params)
    parts += rollout_parts(f.obj, shapes=f.shapes, act=f.act, answers=f.batch * f.spec.train.grad_accum, world=f.world,
                           gpus_per_node=f.spec.resources.gpus_per_node, total_params=f.total)
    return [Component(name=name, bytes=n, note=note) for name, n, note in parts]

def estimate(
    spec: FineTuneSpec, *, device: str = "gpu", seq_len: int | None = None, micro_batch: int | None = None,
    config: dict[str, Any] | None = None,
) -> MemoryEstimate:
    """Per-GPU (or per-process on CPU) training memory for the spec, by component."""
    f = _facts(spec, device=device, seq_len=seq_len, micro_batch=micro_batch, config=config)
    state = [*_weights(f), *_training_state(f, BYTES[trainable_dtype(spec, f.precision)])]
    if spec.distributed.strategy == "fsdp" and spec.distributed.offload:  # sdk.core.offload_plan: the CPU holds these
        state = [Component(name=n, bytes=b, note=note) for n, b, note in offloaded_parts(
            f.shapes, total=f.total, trainable=f.trainable, act=f.act, host_bytes=sum(p.bytes for p in state),
            world=f.world, adapter=f.method.adds_parameters)]
    parts = [*state, *_activations(f), *_objective_parts(f)]
    allocated = sum(p.bytes for p in parts)
    overhead = CUDA_CONTEXT + int(0.05 * allocated) if device == "gpu" else 0
    required = allocated + overhead
    fits = [_fit(name, gb, required, f) for name, gb in GPUS.items()]
    if f.obj.rollouts and device == "gpu":
        gpu = _shown_gpu(spec, fits)
        if f.obj.share:  # a colocated vLLM: shown on one GPU, counted per GPU in `fits`
            name, engine, note = colocated_part(f.obj, gpu=gpu, gpu_gb=GPUS[gpu])
            parts.append(Component(name=name, bytes=engine, note=note))
            allocated, required = allocated + engine, required + engine
        seconds = _decode_seconds(f, gpu)
        if seconds is not None:
            last = parts[-1]
            parts[-1] = last.model_copy(update={"note": f"{last.note}; ≈{seconds:.1f} s decoding per step on {gpu}"})
    if device == "gpu":
        parts.append(Component(name="runtime overhead", bytes=overhead, note="CUDA context + 5% allocator slack"))
    return MemoryEstimate(
        model=spec.model.id, method=f.method.name, device=device, total_params=f.total, trainable_params=f.trainable,
        world_size=f.world, seq_len=f.seq, micro_batch=f.batch, components=parts, allocated_bytes=allocated,
        required_bytes=required, fits=fits,
    )


def _fit(gpu: str, gb: int, required: int, f: _Facts) -> GpuFit:
    """Does the run fit this GPU: training, plus a colocated vLLM's share of the GPU's memory; with a vLLM server the
    serving GPU (one of the same kind) must also hold the 16-bit base."""
    memory = gb * 1e9
    held = required + f.obj.share * memory
    fits = held <= memory and (not f.obj.serving_gpus or 2 * f.total <= SERVER_SHARE * memory)
    return GpuFit(gpu=gpu, memory_gb=gb, fits=fits, headroom_gb=round(gb - held / 1e9, 1),
                  hourly_usd=_hourly_price(gpu, f.spec))


def _shown_gpu(spec: FineTuneSpec, fits: list[GpuFit]) -> str:
    """The GPU a figure that depends on the GPU is shown for: the first the spec names, else the smallest that fits,
    else the largest."""
    named = [g for g in (spec.resources.accelerators or {}) if g in GPUS]
    return named[0] if named else next((fit.gpu for fit in fits if fit.fits), list(GPUS)[-1])


def _decode_seconds(f: _Facts, gpu: str) -> float | None:
    """Seconds one optimizer step spends decoding on this GPU; None for objectives that sample nothing."""
    held = sum(p.bytes for p in _weights(f)) if f.method.quantized_base else f.total * f.weight  # generate gathers
    answers = f.batch * f.spec.train.grad_accum * (f.world if f.obj.serving_gpus else 1)  # a server: every process's
    return decode_seconds(f.obj, gpu=gpu, weights_held=held, total_params=f.total, answers=answers,
                          kv_per_token=kv_bytes_per_token(f.shapes, f.act))


def _hourly_price(gpu: str, spec: FineTuneSpec) -> float | None:
    """Cheapest hourly price of a 1-GPU instance from SkyPilot's local catalog, when it has been fetched."""
    catalog_root = Path.home() / ".sky" / "catalogs"
    if not catalog_root.is_dir():
        return None
    best: float | None = None
    for vms in catalog_root.glob("v*/*/vms.csv"):
        try:
            with open(vms, newline="") as handle:
                for row in csv.DictReader(handle):
                    if row.get("AcceleratorName") != gpu or row.get("AcceleratorCount") not in ("1", "1.0"):
                        continue
                    price = row.get("SpotPrice" if spec.resources.spot else "Price")
                    if price:
                        value = float(price)
                        best = value if best is None else min(best, value)
        except (OSError, ValueError):
            continue
    return best


def rank_accelerators(spec: FineTuneSpec) -> list[str]:
    """GPUs that fit, cheapest known price first, else smallest memory first (for recipes that pin none)."""
    fits = [f for f in estimate(spec).fits if f.fits]
    return [f.gpu for f in sorted(fits, key=lambda f: (f.hourly_usd is None, f.hourly_usd or 0, f.memory_gb))]


# ---------------------------------------------------------------------------------------- cost

# Dense bf16/fp16 tensor-core peak, TFLOP/s (vendor sheets). A run reaches a fraction of it (MFU_ASSUMED).
PEAK_TFLOPS: dict[str, float] = {
    "T4": 65, "V100": 125, "V100-32GB": 125, "L4": 121, "A10G": 70, "A10": 125, "RTX4090": 165, "A100": 312,
    "A100-80GB": 312, "L40S": 362, "A40": 150, "RTX6000-Ada": 364, "H100": 989, "H200": 989, "B200": 2250,
}
MFU_ASSUMED = 0.3  # PEFT fine-tuning at modest batch reaches 25-40% of peak
STARTUP_HOURS = 0.25  # provisioning, setup, model download and evaluation, billed too


class CostEstimate(BaseModel):
    """What one run would cost on the first candidate GPU: FLOPs at an assumed utilisation, plus start-up."""

    gpu: str | None
    gpus: int
    hourly_usd: float | None  # per GPU, SkyPilot's local catalog; None when unknown
    hours: float | None  # None when the run's length is unknown (epochs over data the client has not read)
    usd: float | None
    note: str = ""
    rollout_hours: float | None = None  # of `hours`, the time spent generating answers (objectives that sample)


def estimate_cost(spec: FineTuneSpec, *, backend: str) -> CostEstimate:
    """Local runs cost nothing here. Cloud runs: tokens = steps x batch x accumulation x training processes x
    sequence length x sequences per row (an upper bound: rows shorter than max_length cost less); FLOPs per token =
    2 (forward) + 2 (activation gradients) + 2 more when the base's own weights train, + 2 with recomputation, + 2
    for a reference forward; plus the rollouts' decoding time (the module docstring), billed on every GPU."""
    given = spec.resources.hourly_price  # per node-hour: a Slurm/Kubernetes price, or the user's own for a cloud
    if backend == "local":
        if given:
            return CostEstimate(gpu=None, gpus=0, hourly_usd=given, hours=None, usd=None,
                                note=f"this machine at ${given:,.2f}/h (resources.hourly_price); its speed is unknown")
        return CostEstimate(gpu=None, gpus=0, hourly_usd=0.0, hours=None, usd=0.0, note="local machine")
    accelerators = spec.resources.accelerators or {}
    gpu = next(iter(accelerators), None) or next(iter(rank_accelerators(spec)), None)
    if gpu is None:
        return CostEstimate(gpu=None, gpus=0, hourly_usd=None, hours=None, usd=None, note="no GPU fits the spec")
    per_node = accelerators.get(gpu, 1)
    gpus = per_node * spec.resources.nodes
    hourly = _hourly_price(gpu, spec)
    steps = spec.train.max_steps
    if steps is None:
        return CostEstimate(gpu=gpu, gpus=gpus, hourly_usd=hourly, hours=None, usd=None,
                            note="train.epochs: the number of steps depends on the data; set train.max_steps to price it")
    config = config_for(spec.model.id)
    if config is None or gpu not in PEAK_TFLOPS:
        return CostEstimate(gpu=gpu, gpus=gpus, hourly_usd=hourly, hours=None, usd=None,
                            note=f"no architecture or no throughput figure known for {spec.model.id} on {gpu}")
    shapes = Shapes(config)
    f = _facts(spec, device="gpu", seq_len=None, micro_batch=None, config=config)
    t = spec.train
    training = max(1, gpus - spec.resources.nodes * f.obj.serving_gpus)  # a serving GPU does not train
    tokens = steps * t.batch_size * t.grad_accum * training * f.seq * f.obj.seqs
    per_token = 4 + (2 if method_of(spec).trains_all_weights else 0) + (2 if gradient_checkpointing(spec) else 0)
    per_token += 2 if f.obj.reference else 0
    seconds = per_token * shapes.total_params() * tokens / (training * PEAK_TFLOPS[gpu] * 1e12 * MFU_ASSUMED)
    hours = seconds / 3600 + STARTUP_HOURS
    notes = [] if hourly is not None or given is not None else \
        [f"no price for {gpu}: SkyPilot's catalog is not fetched here (or set resources.hourly_price)"]
    decoding = _decode_seconds(f, gpu)
    rollout_hours = None if decoding is None else steps * decoding / 3600
    if rollout_hours is not None:
        hours += rollout_hours
        notes.append(f"rollouts: {rollout_hours:.2f} h decoding {f.obj.completion} tokens per answer on {gpu} "
                     f"({f.obj.rollouts}, memory-bandwidth bound: sdk.core.objective_plan)")
    usd = round(hours * given * spec.resources.nodes, 2) if given is not None else \
        None if hourly is None else round(hours * hourly * gpus, 2)
    return CostEstimate(gpu=gpu, gpus=gpus, hourly_usd=hourly, hours=round(hours, 3), usd=usd, note="; ".join(notes),
                        rollout_hours=None if rollout_hours is None else round(rollout_hours, 3))
