"""objective: grpo — Group Relative Policy Optimization (trl's GRPOTrainer): for each prompt the model samples a
group of answers, reward functions score them, and answers above their group's mean are made more likely. The
DAPO-style defaults (token-level loss, clip-higher, truncated answers masked) follow trl's documentation."""

from __future__ import annotations

import json
import re
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
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] | None = Field(
        None, description="trl's loss; default dapo, or grpo with importance_sampling_level sequence (GSPO)")
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="sequence: one importance ratio per answer (GSPO, as trl documents it)")
    epsilon: float | None = Field(None, gt=0, lt=1, description="lower clipping bound of the importance ratio; "
                                                                "default 0.2, GSPO's 3e-4 at sequence level")
    epsilon_high: float | None = Field(
        None, gt=0, le=100, description="upper clipping bound; default DAPO's clip-higher 0.28 for grpo/dapo/bnpo/"
                                        "dr_grpo, 5.0 for cispo (its truncation bound), GSPO's 4e-4, else epsilon")
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
        loss, low, high = self.resolved_loss, self.resolved_epsilon, self.resolved_epsilon_high
        if loss == "cispo" and high is not None and high < 1:
            raise ValueError(f"cispo truncates the importance weight at epsilon_high ({high}): below 1 every token's "
                             "weight is cut to it; trl documents 5.0")
        if loss != "cispo" and high is not None and high < low:
            raise ValueError(f"epsilon_high ({high}) is below epsilon ({low})")
        return self

    @property
    def resolved_loss(self) -> str:
        return self.loss_type or ("grpo" if self.importance_sampling_level == "sequence" else "dapo")

    @property
    def resolved_epsilon(self) -> float:
        if self.epsilon is not None:
            return self.epsilon
        return 3e-4 if self.importance_sampling_level == "sequence" else 0.2

    @property
    def resolved_epsilon_high(self) -> float | None:
        """None: trl's default (epsilon itself)."""
        if self.epsilon_high is not None:
            return self.epsilon_high
        if self.importance_sampling_level == "sequence":
            return 4e-4
        return {"cispo": 5.0, "grpo": 0.28, "dapo": 0.28, "bnpo": 0.28, "dr_grpo": 0.28}.get(self.resolved_loss)


def processes(spec: Any) -> int:
    """Training processes the spec asks for (each GPU one; the CPU one); with rollouts on a vLLM server, each node's
    last GPU serves instead of training (launch.rollout_server)."""
    gpus = spec.distributed.nproc_per_node or spec.resources.gpus_per_node or 1
    serving = 1 if spec.objective.rollouts == "vllm_server" and not spec.distributed.nproc_per_node and gpus > 1 else 0
    return max(1, spec.resources.nodes) * max(1, gpus - serving)


def _check(spec: Any) -> list[tuple[str, str]]:
    """trl's own rules (GRPOConfig.__post_init__), before launch rather than on a provisioned node."""
    g, n = spec.objective, processes(spec)
    batch = spec.train.batch_size * n  # answers per optimizer micro-step across processes
    generated = g.generation_batch_size or batch * spec.train.grad_accum
    problems = []
    if g.generation_batch_size is not None and g.generation_batch_size % batch:
        problems.append(("objective.generation_batch_size", f"{g.generation_batch_size} is not a multiple of the "
                         f"{batch} answers of a micro-step (train.batch_size {spec.train.batch_size} × {n} "
                         "process(es))"))
    elif generated % g.num_generations:
        how = "objective.generation_batch_size" if g.generation_batch_size else \
            f"train.batch_size {spec.train.batch_size} × grad_accum {spec.train.grad_accum} × {n} process(es)"
        problems.append(("objective.num_generations", f"{g.num_generations} answers per prompt do not divide the "
                         f"{generated} answers generated at once ({how}): make them a multiple"))
    if g.rollouts == "vllm_server" and spec.resources.nodes > 1:
        problems.append(("objective.rollouts", "vllm_server runs on one node (its last GPU serves the others); "
                         "use vllm_colocate across nodes"))
    return problems


def _shipped(settings: GrpoSettings) -> list[tuple[str, str, str]]:
    return [(f"objective.rewards[{i}].function", r.function, r.function.rpartition(":")[0])
            for i, r in enumerate(settings.rewards) if r.type == "function"]


_ITEM = re.compile(r"\{\{\s*item\.([^.\[\s}]+)")
_COMPARES = ("exact_match", "token_f1", "rouge_l", "json_fields", "tool_call")  # built-ins against a reference column


def _columns_read(settings: GrpoSettings) -> list[tuple[str, str]]:
    """(field, column) of every row column a reward reads: a built-in's `reference`, a grader template's {{item.X}}."""
    out = []
    for i, reward in enumerate(settings.rewards):
        where = f"objective.rewards[{i}]"
        if reward.type in _COMPARES:
            out.append((f"{where}.reference", reward.reference))
        elif reward.type not in ("function", "python"):
            out += [(where, column) for column in dict.fromkeys(_ITEM.findall(json.dumps(reward.model_dump())))]
    return out


def _train_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """Two prompts' answers per step unless the spec says otherwise (train.batch_size counts answers, as in trl)."""
    generations = settings.get("num_generations", GrpoSettings.model_fields["num_generations"].default)
    return {"batch_size": 2 * generations} if isinstance(generations, int) and generations > 0 else {}


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
    node_extras=_node_extras, ships=_shipped, secrets=lambda g: _key_names(g.rewards), reads_columns=_columns_read,
    heldout_rewards=lambda g: g.rewards, train_defaults=_train_defaults,
    answer_tokens=lambda g: g.max_completion_length,
    # OpenAI's reinforcement method: its grader is the reward; its compute and reasoning knobs have no counterpart
    openai_method="reinforcement", openai_settings=lambda body: {"rewards": [body["grader"]]} if "grader" in body else {},
    openai_hyperparameters={"compute_multiplier": None, "eval_interval": None, "eval_samples": None,
                            "reasoning_effort": None},
)
