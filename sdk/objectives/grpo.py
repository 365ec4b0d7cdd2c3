"""objective: grpo — Group Relative Policy Optimization (trl's GRPOTrainer): for each prompt the model samples a
group of answers, reward functions score them, and answers above their group's mean are made more likely. The
DAPO-style defaults (token-level loss, clip-higher, truncated answers masked) follow trl's documentation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sdk.objectives.base import LoggedMetric, Objective, ObjectiveSettings, PlanFacts
from sdk.objectives.rewards import RewardSpec, reward_shorthand

Rollouts = Literal["auto", "transformers", "vllm_colocate", "vllm_server"]


class GrpoSettings(ObjectiveSettings):
    name: Literal["grpo"] = "grpo"
    rewards: list[RewardSpec] = Field(  # type: ignore[valid-type]
        min_length=1, description="what scores an answer, weighted and summed: built-in rewards by name, Python "
                                  "functions (file.py:function) or OpenAI grader objects")
    num_generations: int = Field(8, ge=2, description="answers sampled per prompt (the group)")
    generation_batch_size: int | None = Field(
        None, ge=2, description="answers generated per generation round; default: one optimizer step's worth")
    max_completion_length: int = Field(128, ge=1, le=65_536, description="tokens per sampled answer at most")
    temperature: float = Field(1.0, gt=0, le=10)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.0, ge=0, description="KL coefficient against the base; 0 loads no reference model")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="sequence: one importance ratio per answer (GSPO)")
    epsilon: float = Field(0.2, gt=0, lt=1, description="lower clipping bound of the importance ratio")
    epsilon_high: float | None = Field(0.28, gt=0, lt=10, description="upper clipping bound (DAPO's clip-higher); "
                                                                       "null: epsilon")
    num_iterations: int = Field(1, ge=1, description="optimizer passes over each generated batch (μ)")
    scale_rewards: Literal["group", "batch", "none"] = "group"
    mask_truncated_completions: bool = Field(True, description="answers cut at max_completion_length take no loss")
    rollouts: Rollouts = Field(
        "auto", description="who generates: auto (vLLM colocated on CUDA nodes, transformers elsewhere), "
                            "transformers, vllm_colocate, or vllm_server (a vLLM server on a GPU of its own)")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1, description="the GPU share vLLM takes when colocated")
    log_completions: bool = False

    @field_validator("rewards", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        items = value if isinstance(value, list) else [value]
        return [reward_shorthand(v) for v in items]

    @model_validator(mode="after")
    def _clip(self) -> GrpoSettings:
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(f"epsilon_high ({self.epsilon_high}) is below epsilon ({self.epsilon})")
        return self


def processes(spec: Any) -> int:
    """Training processes the spec asks for (each GPU one; the CPU one); with rollouts on a vLLM server, each node's
    last GPU serves instead of training (launch.rollout_server)."""
    gpus = spec.distributed.nproc_per_node or spec.resources.gpus_per_node or 1
    serving = 1 if spec.objective.rollouts == "vllm_server" and not spec.distributed.nproc_per_node and gpus > 1 else 0
    return max(1, spec.resources.nodes) * max(1, gpus - serving)


def _check(spec: Any) -> list[tuple[str, str]]:
    g = spec.objective
    answers = spec.train.batch_size * spec.train.grad_accum * processes(spec)
    problems = []
    if answers % g.num_generations:
        problems.append(("objective.num_generations", f"{g.num_generations} answers per prompt do not divide the "
                         f"{answers} answers of a step (train.batch_size {spec.train.batch_size} × grad_accum "
                         f"{spec.train.grad_accum} × {processes(spec)} process(es)): make them a multiple"))
    if g.generation_batch_size is not None and g.generation_batch_size % g.num_generations:
        problems.append(("objective.generation_batch_size", f"must be a multiple of num_generations ({g.num_generations})"))
    if g.rollouts != "auto" and g.rollouts.startswith("vllm") and spec.resources.accelerators is None \
            and not spec.resources.infra:
        problems.append(("objective.rollouts", f"{g.rollouts} needs a CUDA GPU: name resources.accelerators, "
                         "or use rollouts: transformers (auto picks it on CPU)"))
    return problems


def _shipped(settings: GrpoSettings) -> list[tuple[str, str, str]]:
    return [(f"objective.rewards[{i}].function", r.function, r.function.rpartition(":")[0])
            for i, r in enumerate(settings.rewards) if r.type == "function"]


def _key_names(graders: Any) -> list[str]:
    names = []
    for grader in graders:
        if getattr(grader, "type", None) == "multi":
            names += _key_names(grader.graders.values())
        elif getattr(grader, "api_key_env", None):
            names.append(grader.api_key_env)
    return names


def _node_extras(settings: GrpoSettings, cuda: bool) -> tuple[str, ...]:
    return ("vllm",) if cuda and settings.rollouts in ("auto", "vllm_colocate", "vllm_server") else ()


OBJECTIVE = Objective(
    name="grpo", settings=GrpoSettings, trainer="launch.objectives.grpo:build", trains_on="examples",
    description="group relative policy optimization: sampled answers scored by rewards, the better ones reinforced",
    formats_excluded=("text",), reads_prompts=True, check=_check, rows="sdk.data.prompts:prompt_row",
    default_metric="heldout_reward",
    metrics=(
        LoggedMetric("reward", "max", "mean weighted reward of the sampled answers"),
        LoggedMetric("reward_std", "min", "spread of rewards within a group"),
        LoggedMetric("kl", "min", "KL divergence from the base (logged when beta > 0)"),
        LoggedMetric("completions/mean_length", "min", "mean length of the sampled answers in tokens"),
        LoggedMetric("completions/clipped_ratio", "min", "share of answers cut at max_completion_length"),
        LoggedMetric("entropy", "min", "mean token entropy of the sampled answers"),
        LoggedMetric("heldout_reward", "max", "mean reward of the tuned model's greedy answers to held-out prompts"),
    ),
    plan=PlanFacts(rollouts=lambda g: (g.num_generations, g.max_completion_length),
                   reference_forward=lambda g: g.beta > 0),
    node_extras=_node_extras, ships=_shipped, secrets=lambda g: _key_names(g.rewards),
)
