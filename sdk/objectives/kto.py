"""objective: kto — Kahneman-Tversky optimization from binary feedback (trl's KTOTrainer): desirable answers up,
undesirable ones down. Unless the user sets the class weights, the rarer class is weighted up to balance them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sdk.objectives.base import LoggedMetric, Objective, ObjectiveSettings, PlanFacts


class KtoSettings(ObjectiveSettings):
    name: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0, description="how far the tuned model may move from the base; higher stays closer")
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field(
        "kto", description="kto estimates a KL term from the other rows of a batch; apo_zero_unpaired needs none")
    desirable_weight: float | None = Field(None, gt=0, description="default: balanced against the undesirable rows")
    undesirable_weight: float | None = Field(None, gt=0, description="default: balanced against the desirable rows")


def _check(spec: Any) -> list[tuple[str, str]]:
    if spec.objective.loss_type == "kto" and spec.train.batch_size < 2:  # trl refuses it too, but only on the node
        return [("train.batch_size", "kto estimates its KL term from the other rows of the same micro-batch, so "
                 "gradient accumulation cannot stand in for it: set train.batch_size to 2 or more, or "
                 "objective.loss_type: apo_zero_unpaired (no KL term), which trains at batch size 1")]
    return []


OBJECTIVE = Objective(
    name="kto", settings=KtoSettings, trainer="launch.objectives.kto:build", trains_on="feedback",
    reads_in_order=True,  # KL pairs each row with its neighbours
    description="Kahneman-Tversky optimization: desirable answers up, undesirable ones down (binary feedback)",
    check=_check, plan=PlanFacts(sequences_per_row=2, reference_forward=True),
    metrics=(LoggedMetric("rewards/chosen", "max", "mean implicit reward of the desirable answers"),
             LoggedMetric("rewards/rejected", "min", "mean implicit reward of the undesirable answers"),
             LoggedMetric("rewards/margins", "max", "desirable minus undesirable implicit reward"),
             LoggedMetric("kl", "min", "the batch's KL estimate against the base"),
             LoggedMetric("eval_rewards/margins", "max", "rewards/margins on the held-out rows")),
)
