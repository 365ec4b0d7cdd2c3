"""objective: dpo — direct preference optimization: chosen over rejected answers (trl's DPOTrainer), with trl's
loss variants (IPO, robust, hinge, APO …) by `loss_type`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sdk.objectives.base import LoggedMetric, Objective, ObjectiveSettings, PlanFacts

DpoLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm"]

# What the preference trainers log (trl's names; sdk.core.metric_names keeps them as logged).
PREFERENCE_METRICS = (
    LoggedMetric("rewards/accuracies", "max", "share of pairs whose chosen answer out-scores the rejected one"),
    LoggedMetric("rewards/margins", "max", "mean implicit reward of chosen minus rejected"),
    LoggedMetric("rewards/chosen", "max", "mean implicit reward of the chosen answers"),
    LoggedMetric("rewards/rejected", "min", "mean implicit reward of the rejected answers"),
    LoggedMetric("eval_rewards/accuracies", "max", "rewards/accuracies on the held-out pairs"),
    LoggedMetric("eval_rewards/margins", "max", "rewards/margins on the held-out pairs"),
)


class DpoSettings(ObjectiveSettings):
    name: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0, description="how far the tuned model may move from the base; higher stays closer")
    loss_type: DpoLoss = Field("sigmoid", description="trl's DPO loss: sigmoid (DPO), ipo, robust, hinge, apo_zero …")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="assumed share of flipped labels (robust, cDPO)")


OBJECTIVE = Objective(
    name="dpo", settings=DpoSettings, trainer="launch.objectives.dpo:build", trains_on="preference",
    description="direct preference optimization: chosen over rejected answers", metrics=PREFERENCE_METRICS,
    plan=PlanFacts(sequences_per_row=2, reference_forward=True),
    openai_method="dpo", openai_hyperparameters={"beta": "beta"},
)
