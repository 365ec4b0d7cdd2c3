"""objective kto: trl's KTOTrainer; the class weights the user set, else the rarer class weighted up."""

from __future__ import annotations

from typing import Any

from launch.train import TrainerInputs, with_cpu_resume_fix


def kto_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) for KTO on unbalanced data: the rarer class is weighted up so that
    desirable_weight * desirable / (undesirable_weight * undesirable) is 1, inside the [1, 4/3] the KTO paper
    (Eq. 8) and trl's docs recommend; the commoner class keeps weight 1. One class only: (1, 1)."""
    if not desirable or not undesirable:
        return 1.0, 1.0
    if desirable >= undesirable:
        return 1.0, round(desirable / undesirable, 4)
    return round(undesirable / desirable, 4), 1.0


def build(inputs: TrainerInputs) -> tuple[Any, str | None]:
    from trl import KTOConfig, KTOTrainer

    o = inputs.spec.objective
    labels = list(inputs.train_ds["label"])
    desirable, undesirable = sum(labels), len(labels) - sum(labels)
    balanced = kto_weights(desirable, undesirable)
    desirable_weight = o.desirable_weight if o.desirable_weight is not None else balanced[0]
    undesirable_weight = o.undesirable_weight if o.undesirable_weight is not None else balanced[1]
    chosen = "set in the spec" if (o.desirable_weight, o.undesirable_weight) != (None, None) else "balanced"
    note = (f"kto: {desirable} desirable and {undesirable} undesirable rows, weighted "
            f"{desirable_weight:g} and {undesirable_weight:g} ({chosen})")
    print(f"[finetune] {note}", flush=True)
    args = KTOConfig(**inputs.args, beta=o.beta, loss_type=o.loss_type, desirable_weight=desirable_weight,
                     undesirable_weight=undesirable_weight)
    trainer = with_cpu_resume_fix(KTOTrainer)(model=inputs.model, args=args, train_dataset=inputs.train_ds,
                                              eval_dataset=inputs.eval_ds, processing_class=inputs.tokenizer,
                                              callbacks=inputs.callbacks)
    return trainer, None
