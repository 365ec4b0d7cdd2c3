"""objective: orpo — odds-ratio preference optimization (trl's ORPOTrainer): SFT on the chosen answers plus an
odds-ratio penalty on the rejected ones, with no reference model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sdk.objectives.base import LoggedMetric, Objective, ObjectiveSettings, PlanFacts
from sdk.objectives.dpo import PREFERENCE_METRICS


class OrpoSettings(ObjectiveSettings):
    name: Literal["orpo"] = "orpo"
    beta: float = Field(0.1, gt=0, description="λ of the ORPO paper: weight of the odds-ratio term against SFT")


OBJECTIVE = Objective(
    name="orpo", settings=OrpoSettings, trainer="launch.objectives.orpo:build", trains_on="preference",
    description="odds-ratio preference optimization: SFT on chosen answers with a penalty on rejected ones",
    metrics=(*PREFERENCE_METRICS, LoggedMetric("log_odds_ratio", "max", "mean log odds ratio of chosen over rejected"),
             LoggedMetric("nll_loss", "min", "SFT loss on the chosen answers")),
    plan=PlanFacts(sequences_per_row=2),
)
