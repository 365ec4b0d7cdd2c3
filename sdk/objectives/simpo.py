"""objective: simpo — simple preference optimization (trl's CPOTrainer with loss_type simpo): a length-normalized
reward margin with a target gap γ, and no reference model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sdk.objectives.base import Objective, ObjectiveSettings, PlanFacts
from sdk.objectives.dpo import PREFERENCE_METRICS


class SimpoSettings(ObjectiveSettings):
    name: Literal["simpo"] = "simpo"
    beta: float = Field(2.0, gt=0, description="reward scale (the SimPO paper uses 2.0–2.5)")
    gamma_beta_ratio: float = Field(0.5, ge=0, description="target reward margin γ as a share of beta")
    cpo_alpha: float = Field(0.0, ge=0, description="weight of an SFT term on the chosen answers (0: pure SimPO)")


OBJECTIVE = Objective(
    name="simpo", settings=SimpoSettings, trainer="launch.objectives.simpo:build", trains_on="preference",
    description="simple preference optimization: length-normalized margin of chosen over rejected, no reference",
    metrics=PREFERENCE_METRICS, plan=PlanFacts(sequences_per_row=2),
)
