"""The accelerate config a tool is launched with (`accelerate launch --config_file FILE`): LLaMA-Factory runs FSDP
only this way, its YAML training config never naming it. `finetune import --accelerate-config FILE` reads the
distributed type, FSDP's CPU offload and activation checkpointing, a DeepSpeed plugin's ZeRO stage and offload, and
the mixed precision; without the file, a LLaMA-Factory import says in its header that the setup was not seen."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sdk.importers.draft import Draft

FLAG = "--accelerate-config"
PRECISION = {"bf16": "bf16", "fp16": "fp16", "no": "fp32"}
# the accelerate launch command a config's comments show, as LLaMA-Factory's examples write it
_LAUNCH = re.compile(r"--config_file[ =]+(\S+\.ya?ml)")


def read_accelerate(d: Draft, path: Path) -> None:
    """distributed (and the precision a config left unset) from an accelerate config."""
    from sdk.core.recipes import read_yaml_mapping

    config = read_yaml_mapping(str(path), what="an accelerate config")
    key = f"{FLAG} {path.name}"
    kind = str(config.get("distributed_type", "NO")).upper()
    if d.recipe.get("distributed") and kind not in ("NO", "MULTI_GPU"):
        d.lack(f"{key}: distributed_type {kind} beside the config's own deepspeed file: accelerate runs one of them")
        return
    if kind == "FSDP":
        fsdp = config.get("fsdp_config") or {}
        if fsdp.get("fsdp_activation_checkpointing") or fsdp.get("activation_checkpointing"):
            d.set("train.gradient_checkpointing", True)
        d.fsdp(key, offload=bool(fsdp.get("fsdp_offload_params") or fsdp.get("offload_params")))
        if str(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD")).upper() not in ("FULL_SHARD", "1"):
            d.note(f"{key}: fsdp_sharding_strategy {fsdp['fsdp_sharding_strategy']}: the product shards fully")
    elif kind == "DEEPSPEED":
        _deepspeed(d, key, config.get("deepspeed_config") or {})
    elif kind == "MULTI_GPU" and not d.recipe.get("distributed"):
        d.set("distributed", {"strategy": "ddp"})
        d.note(f"{key}: distributed_type MULTI_GPU written as strategy: ddp")
    elif kind not in ("NO", "MULTI_GPU"):
        d.lack(f"{key}: distributed_type {kind}: the product runs DDP, FSDP or DeepSpeed on GPUs")
    _precision(d, key, str(config.get("mixed_precision", "no")))
    if config.get("num_processes") or config.get("num_machines"):
        d.note(f"{key}: num_processes {config.get('num_processes')} on {config.get('num_machines', 1)} machine(s) "
               "dropped: the product starts one process per GPU of the nodes the recipe's resources name")


def _deepspeed(d: Draft, key: str, plugin: dict[str, Any]) -> None:
    if plugin.get("deepspeed_config_file"):
        d.deepspeed(key, str(plugin["deepspeed_config_file"]))
        return
    stage = int(plugin.get("zero_stage", 2))
    offload = any(str(plugin.get(k, "none")).lower() in ("cpu", "nvme")
                  for k in ("offload_optimizer_device", "offload_param_device"))
    if stage < 2:
        d.set("distributed", {"strategy": "ddp"})
        d.note(f"{key}: ZeRO stage {stage} shards nothing the product shards; written as strategy: ddp")
        return
    d.set("distributed", {"strategy": "deepspeed", "zero_stage": stage, "offload": offload})
    d.note(f"{key}: DeepSpeed ZeRO stage {stage}{', CPU offload' if offload else ''}")


def _precision(d: Draft, key: str, mixed: str) -> None:
    """accelerate's mixed precision applies where the config set neither bf16 nor fp16 (the trainer's flags win)."""
    wanted = PRECISION.get(mixed.lower())
    train = d.recipe.setdefault("train", {})
    if wanted is None or wanted == train.get("precision"):
        return
    if train.get("precision", "fp32") == "fp32" and wanted != "fp32":
        train["precision"] = wanted
        d.notes[:] = [n for n in d.notes if not n.startswith("train.precision: fp32: neither bf16 nor fp16")]
        d.note(f"{key}: mixed_precision {mixed} written as train.precision: {wanted} (the config sets neither bf16 "
               "nor fp16)")
    else:
        d.note(f"{key}: mixed_precision {mixed} dropped: the config's own precision ({train['precision']}) wins, "
               "as in the trainer")


def unseen_launcher_note(d: Draft, tool: str) -> None:
    """A config launched through accelerate whose accelerate config was not given: where its FSDP would be."""
    texts = [d.path.read_text(encoding="utf-8", errors="replace")]  # its comments, or a script beside it naming it
    texts += [t for s in d.path.parent.glob("*.sh") if d.path.name in (t := s.read_text(errors="replace"))]
    named = next((m for m in map(_LAUNCH.search, texts) if m), None)
    folders = [p for p in d.path.resolve().parts[:-1] if "fsdp" in p.lower()]
    if folders or "fsdp" in d.path.stem.lower() or named:
        where = f"its folder {folders[-1]}/" if folders else f"its name {d.path.name}" if not named else "its comments"
        d.note(f"distributed: not written: {where} says it runs under FSDP, which {tool} sets in the accelerate config "
               f"it is launched with (accelerate launch --config_file{' ' + named.group(1) if named else ''}), and "
               f"that file was not seen: the recipe shards nothing; pass {FLAG} FILE to read it")
    else:
        d.note(f"distributed: not written: {tool} takes FSDP or multi-GPU settings from the accelerate config it is "
               f"launched with, which was not seen (pass {FLAG} FILE if there is one)")
