"""What an objective adds to the planner's estimate (sdk.core.plan), from its PlanFacts (sdk.objectives): sequences per
row, a reference model's forward, and the answers it samples while it trains (grpo). Pure arithmetic on the spec's
numbers; sdk.core.plan turns the (name, bytes, note) triples into components.

  pairs            sequences_per_row = 2 (chosen and rejected in one batch): activations, logits and the CPU attention
                   workspace count 2 sequences per row
  reference        reference_forward: a no-grad forward of the reference over the batch: its logits + their fp32
                   log-softmax, s·b·V·(a + 4); for adapters the base with the adapter disabled (no extra weights), else
                   a frozen copy of the model (its weights, sharded like the model's)
  rollouts         training sequences are prompt + completion tokens. Assumed: prompt = data.max_length (the data's cap;
                   shorter prompts cost less), completion = the objective's longest answer (max_completion_length).
    who            what the spec asks; `auto` is planned as vLLM colocated on GPUs (the node's choice where vLLM is
                   installed: launch.gpu.rollout_choice) and transformers on the CPU (vLLM needs CUDA)
    transformers   KV cache 2·L·kv_heads·head_dim·a·n·(prompt + completion), n = the answers one process generates at
                   once = batch × grad_accum (trl's default generation batch: one optimizer step's answers); added to
                   the training peak (an upper bound: trl generates between steps, when no activations are held)
    vLLM colocated a share u of EVERY GPU's memory (objective.vllm_gpu_memory_utilization): a GPU of M bytes fits when
                   required + u·M <= M, i.e. training fits in (1 - u)·M
    vLLM server    each node's last GPU serves (trl vllm-serve: the 16-bit base and its cache in SERVER_SHARE of it) and
                   does not train: world size = nodes × (GPUs per node - 1); a GPU fits only if it holds that base

Rollout time: decoding is memory-bandwidth bound. Each of the completion's decode steps reads the weights once and the
KV cache of the n answers in flight, for all n at once:
    t_step = max(floor, (W + n·kv·(prompt + completion/2)) / (B·e))
    rollout seconds per optimizer step = completion · t_step
  W: the 16-bit base (vLLM) or the weights as held (transformers); kv: KV bytes per token; B: the GPU's memory
  bandwidth (GPU_BANDWIDTH_GBS, vendor sheets); e: the share of it a decode step reaches (BANDWIDTH_EFFICIENCY: vLLM
  0.5, transformers 0.25); floor: a decode step's fixed cost (DECODE_STEP_FLOOR_S: vLLM 5 ms with CUDA graphs,
  transformers 20 ms, a Python loop per token); n: one process's answers per step (a vLLM server: every process's).
  e and the floors are assumptions, not measurements; the prompts' prefill (compute-bound, one forward) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdk.core.architectures import Shapes

# Memory bandwidth, GB/s (vendor sheets; H100 SXM): what a decode step is bound by.
GPU_BANDWIDTH_GBS: dict[str, int] = {
    "T4": 320, "V100": 900, "L4": 300, "A10G": 600, "RTX4090": 1008, "A10": 600, "V100-32GB": 900, "A100": 1555,
    "L40S": 864, "A40": 696, "RTX6000-Ada": 960, "A100-80GB": 2039, "H100": 3350, "H200": 4800, "B200": 8000,
}
BANDWIDTH_EFFICIENCY = {"vllm": 0.5, "transformers": 0.25}  # assumed share of the bandwidth a decode step reaches
DECODE_STEP_FLOOR_S = {"vllm": 0.005, "transformers": 0.02}  # assumed fixed cost of one decode step
SERVER_SHARE = 0.9  # trl vllm-serve's --gpu_memory_utilization default: the serving GPU's share for vLLM

Part = tuple[str, int, str]  # (component name, bytes, note)


@dataclass(frozen=True)
class ObjectivePlan:
    """The objective's facts as the planner uses them."""

    seqs: int = 1  # sequences per row
    reference: bool = False  # a no-grad forward of a reference model per batch
    prompt: int = 0  # tokens of one sequence's prompt (data.max_length, or the planner's seq_len)
    completion: int = 0  # tokens of one sampled answer; 0: the objective samples nothing
    rollouts: str | None = None  # transformers | vllm_colocate | vllm_server; None: the objective samples nothing
    share: float = 0.0  # the share of every GPU's memory a colocated vLLM takes

    @property
    def seq(self) -> int:
        return self.prompt + self.completion

    @property
    def serving_gpus(self) -> int:
        """GPUs per node that serve and do not train."""
        return 1 if self.rollouts == "vllm_server" else 0


def objective_plan(facts: Any, settings: Any, *, device: str, prompt: int) -> ObjectivePlan:
    """From an objective's PlanFacts and the spec's settings of it. A `reference_forward` may be a function of the
    settings (grpo loads a reference only when beta > 0)."""
    reference = facts.reference_forward(settings) if callable(facts.reference_forward) else facts.reference_forward
    if facts.rollouts is None:
        return ObjectivePlan(seqs=facts.sequences_per_row, reference=bool(reference), prompt=prompt)
    rollouts = planned_rollouts(settings, device=device)
    share = float(getattr(settings, "vllm_gpu_memory_utilization", 0.0)) if rollouts == "vllm_colocate" else 0.0
    return ObjectivePlan(seqs=facts.sequences_per_row, reference=bool(reference), prompt=prompt,
                         completion=facts.rollouts(settings)[1], rollouts=rollouts, share=share)


def planned_rollouts(settings: Any, *, device: str) -> str:
    """Who generates, as the planner assumes (the module docstring): transformers | vllm_colocate | vllm_server."""
    if device != "gpu":
        return "transformers"
    asked = getattr(settings, "rollouts", "auto")
    return "vllm_colocate" if asked == "auto" else asked


def sequences_note(plan: ObjectivePlan) -> str:
    """What a row's tokens are, where the objective makes them more than one sequence of data.max_length."""
    pairs = f" ({plan.seqs} sequences per row)" if plan.seqs > 1 else ""
    return pairs + (f" (prompt {plan.prompt:,} + completion {plan.completion:,})" if plan.completion else "")


def reference_parts(plan: ObjectivePlan, *, tokens: int, vocab: int, act: int, adapter: bool,
                    copy_bytes: int) -> list[Part]:
    """A reference's no-grad forward over the batch: its logits, and a copy of the model's weights unless the reference
    is the base with the adapter disabled (peft's disable_adapter: the same weights)."""
    if not plan.reference:
        return []
    logits = ("reference logits", tokens * vocab * (act + 4),
              f"no-grad forward of the reference: {tokens:,} tokens' logits + fp32 log-softmax")
    if adapter:
        return [(logits[0], logits[1], logits[2] + "; the base with the adapter disabled: no extra weights")]
    return [("reference weights", copy_bytes, "a frozen copy of the model (no adapter to disable)"), logits]


def kv_bytes_per_token(shapes: Shapes, act: int) -> int:
    """Keys and values of every layer for one token."""
    return 2 * shapes.layers * shapes.kv_heads * shapes.head_dim * act


def rollout_parts(plan: ObjectivePlan, *, shapes: Shapes, act: int, answers: int, world: int, gpus_per_node: int,
                  total_params: int) -> list[Part]:
    """What generation holds beside training where it does not depend on the GPU (a colocated vLLM's share does: the
    planner shows it per GPU). `answers`: what one process generates at once."""
    if plan.rollouts == "transformers":
        return [("rollouts: KV cache", kv_bytes_per_token(shapes, act) * answers * plan.seq,
                 f"transformers generate: {answers} answers at once × {plan.seq:,} tokens × 2 × {shapes.layers} "
                 f"layers × {shapes.kv_heads} KV heads × {shapes.head_dim} × {act} B; on top of training "
                 "(upper bound)")]
    if plan.rollouts == "vllm_server":
        short = "" if gpus_per_node >= 2 else f"; NEEDS 2+ GPUs per node, the spec has {gpus_per_node}"
        return [("rollouts: vLLM server", 0,
                 f"each node's last GPU serves and does not train (training world size {world}); it holds the 16-bit "
                 f"base ({2 * total_params / 1e9:.1f} GB) in {SERVER_SHARE:.0%} of its memory{short}")]
    return []


def colocated_part(plan: ObjectivePlan, *, gpu: str, gpu_gb: int) -> Part:
    """A colocated vLLM's share, shown on one GPU (the planner counts it per GPU in the fit table)."""
    return ("rollouts: vLLM colocated", int(plan.share * gpu_gb * 1e9),
            f"{plan.share:.0%} of each GPU's memory (objective.vllm_gpu_memory_utilization), here {gpu}'s {gpu_gb} GB; "
            "the fit table counts it per GPU")


def decode_seconds(plan: ObjectivePlan, *, gpu: str, weights_held: int, total_params: int, answers: int,
                   kv_per_token: int) -> float | None:
    """Seconds one optimizer step spends decoding `answers` answers on this GPU (the module docstring's formula); None
    when the objective samples nothing or the GPU's bandwidth is unknown."""
    if plan.rollouts is None or gpu not in GPU_BANDWIDTH_GBS:
        return None
    engine = "transformers" if plan.rollouts == "transformers" else "vllm"
    weights = weights_held if engine == "transformers" else 2 * total_params  # vLLM holds the 16-bit base
    read = weights + answers * kv_per_token * (plan.prompt + plan.completion / 2)
    step = max(DECODE_STEP_FLOOR_S[engine], read / (GPU_BANDWIDTH_GBS[gpu] * 1e9 * BANDWIDTH_EFFICIENCY[engine]))
    return plan.completion * step
