"""What an importer builds while it reads a config: the recipe so far, the notes for its header (every key whose
meaning changed, that was dropped, or whose default differs) and the capabilities the product lacks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk.core.errors import FinetuneError, SpecError
from sdk.core.methods import REGISTRY

# Keys read and decided by hand in every tool; what a config sets beyond its importer's keys is dropped with a note.
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = {
    "adamw_torch": "adamw_torch", "adamw_hf": "adamw_torch", "adamw_torch_fused": "adamw_torch",
    "adamw_bnb_8bit": "adamw_8bit", "adamw_8bit": "adamw_8bit", "adamw_torch_8bit": "adamw_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit",
    "adafactor": "adafactor", "sgd": "sgd",
    "adamw_torch_4bit": "adamw_8bit",  # torchao's 4-bit states: bitsandbytes' 8-bit ones are the nearest kept here
}
ATTENTION = {"flash_attention_2": "flash_attention_2", "fa2": "flash_attention_2", "sdpa": "sdpa",
             "eager": "eager", "disabled": "eager", "auto": "auto"}


class ImportRefused(FinetuneError):
    """The config asks for what the product cannot train: one line per missing capability (exit 2)."""

    def __init__(self, source: str, missing: list[str]):
        self.missing = list(missing)
        super().__init__(f"{source}: cannot import; the product lacks what it asks for:"
                         + "".join(f"\n  {line}" for line in self.missing))


@dataclass
class Draft:
    """A recipe being written from one config file."""

    path: Path
    config: dict[str, Any]
    data_dir: Path | None = None
    accelerate: Path | None = None  # an accelerate config the tool is launched with (--accelerate-config)
    recipe: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    def get(self, key: str, default: Any = None) -> Any:
        """A config value (None and empty strings read as unset); marks the key as read."""
        self.used.add(key)
        value = self.config.get(key)
        return default if value is None or value == "" else value

    def set(self, path: str, value: Any) -> None:
        """recipe[a][b] = value for path 'a.b'."""
        *parents, last = path.split(".")
        node = self.recipe
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    def note(self, line: str) -> None:
        self.notes.append(line)

    def lack(self, line: str) -> None:
        self.missing.append(line)

    def find(self, name: str) -> Path | None:
        """A file a config points to: as written, beside the config, or under one of the config's folders (the
        tools resolve these against the directory they were started in, usually the repository's root)."""
        candidates = [Path(name).expanduser()]
        if self.data_dir:
            candidates.append(self.data_dir / name)
        candidates += [parent / name for parent in self.path.resolve().parents]
        candidates.append(self.path.parent / Path(name).name)
        return next((c for c in candidates if c.is_file()), None)

    def read_json(self, key: str, name: str) -> dict[str, Any] | None:
        found = self.find(name)
        if found is None:
            self.note(f"{key}: {name} not found here; its settings are not carried over (put it beside the config)")
            return None
        try:
            return json.loads(found.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpecError(f"{found}: cannot read {key} JSON: {exc}") from None

    def deepspeed(self, key: str, name: str) -> None:
        """distributed from a DeepSpeed JSON: ZeRO stage and CPU offload."""
        config = self.read_json(key, name)
        if config is None:
            stage = 3 if "3" in Path(name).stem else 2
            self.set("distributed", {"strategy": "deepspeed", "zero_stage": stage})
            self.note(f"{key}: ZeRO stage {stage} read from the file's name")
            return
        zero = config.get("zero_optimization") or {}
        stage = zero.get("stage", 0)
        if stage in (0, 1):
            self.set("distributed", {"strategy": "ddp"})
            self.note(f"{key}: ZeRO stage {stage} shards nothing the product shards; written as strategy: ddp")
            return
        offload = any((zero.get(k) or {}).get("device") in ("cpu", "nvme")
                      for k in ("offload_optimizer", "offload_param"))
        if any((zero.get(k) or {}).get("device") == "nvme" for k in ("offload_optimizer", "offload_param")):
            self.lack(f"{key}: NVMe offload ({name}): distributed.offload moves states to CPU memory only")
        self.set("distributed", {"strategy": "deepspeed", "zero_stage": stage, "offload": offload})
        self.note(f"{key}: {name} read: ZeRO stage {stage}{', CPU offload' if offload else ''}; its other settings "
                  "(bucket sizes, auto batch sizes) are the product's own")
        if config.get("fp8") or (config.get("bf16") or {}).get("fp8"):
            self.lack(f"{key}: FP8 training ({name}): precision is bf16, fp16 or fp32")

    def fsdp(self, key: str, *, offload: bool) -> None:
        """distributed for a config trained under FSDP: QLoRA as ZeRO-3 (FSDP2 corrupts 4-bit weights), an 8-bit
        base refused (int8 weights cannot be sharded), the rest as the product's FSDP2."""
        method = self.recipe.get("method")
        if isinstance(method, dict) and method.get("quant_type") == "int8":
            self.lack(f"{key}: an 8-bit base (load_in_8bit) under FSDP: bitsandbytes' int8 weights cannot be sharded "
                      "by FSDP or ZeRO-3; use load_in_4bit (sharded under ZeRO-3) or train without fsdp")
            return
        if isinstance(method, dict) and REGISTRY[method.get("name", "lora")].quantized_base:
            self.set("distributed", {"strategy": "deepspeed", "zero_stage": 3, "offload": offload})
            self.note(f"{key}: QLoRA under FSDP written as DeepSpeed ZeRO-3 (FSDP2 corrupts 4-bit weights, "
                      "bitsandbytes#1945); ZeRO-3 shards the 4-bit base the same way"
                      + (" and offloads the optimizer states" if offload else ""))
            return
        self.set("distributed", {"strategy": "fsdp", **({"offload": True} if offload else {})})
        self.note(f"{key}: the product's FSDP2 wraps each decoder layer and shards fully"
                  + (", parameters offloaded to CPU memory (distributed.offload)" if offload else "")
                  + "; the other FSDP settings are dropped")

    def optimizer(self, key: str, name: str) -> None:
        mapped = OPTIMIZERS.get(name)
        if mapped is None:
            self.lack(f"{key}: {name}: optimizers are {', '.join(sorted(set(OPTIMIZERS.values())))}")
            return
        self.set("train.optimizer", mapped)
        if mapped != name:
            self.note(f"{key}: {name} written as {mapped}"
                      + (" (8-bit optimizer states: more memory than 4-bit ones)" if name.endswith("4bit") else ""))

    def scheduler(self, key: str, name: str) -> None:
        if name not in SCHEDULERS:
            self.lack(f"{key}: {name}: schedulers are {', '.join(SCHEDULERS)}")
        else:
            self.set("train.scheduler", name)

    def attention(self, key: str, name: str) -> None:
        mapped = ATTENTION.get(str(name))
        self.set("train.attention", mapped or "auto")
        if mapped is None:
            self.note(f"{key}: {name} is not an attention the product loads; written as auto "
                      "(flash_attention_2 where installed, else sdpa)")

    def strategies(self, tool: str, *, held_out: bool, defaults: dict[str, str] | None = None) -> None:
        """eval_strategy / save_strategy (epoch: once an epoch; no: never), after the step counts were read; and the
        checkpoints kept, which both tools leave unlimited unless save_total_limit is set."""
        train = self.recipe.setdefault("train", {})
        for key, per_epoch, steps in (("eval_strategy", "evals_per_epoch", "eval_steps"),
                                      ("save_strategy", "saves_per_epoch", "save_steps")):
            strategy = str(self.get(key, (defaults or {}).get(key, ""))).lower()
            if strategy == "no":
                train.pop(steps, None), train.pop(per_epoch, None)
            elif strategy == "epoch" and (held_out or key == "save_strategy"):
                train.pop(steps, None)
                train[per_epoch] = 1
        if (train.get("save_steps") or train.get("saves_per_epoch")) and self.get("save_total_limit") is None:
            train["keep_checkpoints"] = None
            self.note(f"save_total_limit not set: {tool} keeps every checkpoint (train.keep_checkpoints: null written "
                      "out; the product keeps the newest 2)")

    def dropped(self, reasons: dict[str, str]) -> None:
        """One note per key set in the config that no rule read: why it is dropped."""
        plain = []
        for key, value in self.config.items():
            if key in self.used or value is None or value == "" or value == [] or value == {}:
                continue
            if key in reasons:
                self.note(f"{key}: dropped: {reasons[key]}")
            else:
                plain.append(key)
        if plain:
            self.note(f"dropped, no equivalent in the spec: {', '.join(plain)}")


def hold_out_and_length(d: Draft, *, tool: str, split: Any, split_key: str, length: Any, length_key: str,
                        eval_file: bool) -> None:
    """The two defaults both tools differ on from the product: nothing held out unless asked (the product holds out
    10%; not asked when the config names evaluation data), and 2048 tokens (the product's 512), written out."""
    if not eval_file:
        d.set("data.eval_split", float(split or 0))
    if not eval_file and not split:
        d.note(f"data.eval_split: 0: {tool} holds nothing out unless {split_key} is set; the product holds out 10% "
               "unless data.eval_split: 0 (written out)")
    if length is None:
        d.note(f"{length_key} not set: {tool}'s 2048 written as data.max_length (the product's default is 512)")
    d.set("data.max_length", int(length or 2048))
