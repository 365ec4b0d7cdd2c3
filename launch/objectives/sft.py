"""objective sft: trl's SFTTrainer, packing as launch.gpu.packing_choice decides."""

from __future__ import annotations

from typing import Any

from launch.train import TrainerInputs, with_cpu_resume_fix


def build(inputs: TrainerInputs) -> tuple[Any, str | None]:
    from trl import SFTConfig, SFTTrainer

    from launch.gpu import layer_kinds, packing_choice, transformers_packs_masks

    spec = inputs.spec
    kinds, kinds_from = layer_kinds(inputs.model.config)
    pack, padding_free, note = packing_choice(spec.data.packing, inputs.attention,
                                              packed_masks=transformers_packs_masks(),
                                              kinds=kinds, kinds_from=kinds_from)
    if note:
        print(f"[finetune] note: {note}", flush=True)
    args = SFTConfig(**inputs.args, packing=pack, padding_free=padding_free,
                     completion_only_loss=spec.data.completion_only_loss,
                     assistant_only_loss=inputs.assistant_only_loss)
    trainer = with_cpu_resume_fix(SFTTrainer)(model=inputs.model, args=args, train_dataset=inputs.train_ds,
                                              eval_dataset=inputs.eval_ds, processing_class=inputs.tokenizer,
                                              callbacks=inputs.callbacks)
    return trainer, note
