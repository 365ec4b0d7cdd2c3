"""The model card a Hub export uploads as README.md: YAML front matter as the Hub reads it (base_model,
library_name, license, datasets, tags) and a body that says how the model was made and how well it did, all read
from the run folder (spec.json, summary.json, data.json) so the card is the run's record, not a second account.

Nothing in it is read from the environment: spec.env values and secret names stay out, and local paths are cut
to their file names (a card is often public; the node's home directory is nobody's business)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# Hub repo ids: owner/name, or a legacy single name (gpt2). A model or data source that is not one of these gets no
# front-matter entry: the Hub rejects base_model / datasets values it cannot resolve.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
HUB = "https://huggingface.co"
LICENSE_KEYS = ("license", "license_name", "license_link")  # "other" licenses name themselves in the two last


def model_card(ctx: Any) -> str:
    """README.md for ctx.options.repo: the run's adapter, or with options.merged the merged model."""
    import yaml

    from sdk.core.methods import method_of

    spec, summary, repo = ctx.spec, ctx.summary, ctx.options.repo
    kind = "merged" if ctx.options.merged else method_of(spec).artifact
    sources = (ctx.run.read_json("data.json") or {}).get("sources") or (
        [s.model_dump() for s in summary.data_sources] if summary is not None else [])
    front = front_matter(spec, kind, sources)
    parts = [intro(ctx, kind, summary), method_section(spec, summary), data_section(spec, summary, sources),
             train_section(spec, summary), results_section(summary), run_section(summary),
             usage_section(spec, summary, repo, kind)]
    body = "\n\n".join(part for part in parts if part)
    return f"---\n{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---\n\n{body}\n"


# ------------------------------------------------------------------------------------------ front matter


def hub_model(spec: Any) -> str | None:
    """The base model's Hub id, or None for a tiny model, a packaged file, a .gguf file or a local folder."""
    from sdk.core.modelref import PACKAGE, TINY

    model_id = spec.model.id
    if model_id.startswith((TINY, PACKAGE)) or model_id.endswith(".gguf") or Path(model_id).expanduser().exists():
        return None
    return model_id if HUB_ID.match(model_id) else None


def hub_dataset(source: str) -> str | None:
    """A data source's Hub dataset id (without its `:config`), or None for a file, a folder, s3:// or builtin:."""
    from sdk.data.rows import is_hub_id

    name = source.partition(":")[0]
    if not is_hub_id(source) or Path(name).expanduser().exists():
        return None
    return name if HUB_ID.match(name) else None


def base_license(spec: Any) -> dict[str, str]:
    """The base model's license as its own card states it (a local folder's README.md, or the Hub cache's copy):
    nothing is fetched, and without a card that says one the export claims none."""
    import yaml

    from sdk.core.targets import hub_snapshot

    local = Path(spec.model.id).expanduser()
    repo = hub_model(spec)
    folder = local if local.is_dir() else hub_snapshot(repo, spec.model.revision) if repo else None
    readme = folder / "README.md" if folder is not None else None
    if readme is None or not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*$", text, re.DOTALL | re.MULTILINE)
    try:
        meta = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return {}
    if not isinstance(meta, dict):
        return {}
    return {key: str(meta[key]) for key in LICENSE_KEYS if isinstance(meta.get(key), (str, int, float))}


def front_matter(spec: Any, kind: str, sources: list[dict[str, Any]]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    base = hub_model(spec)
    if base:
        meta["base_model"] = base
    library = {"peft_adapter": "peft", "whole_model": "transformers", "merged": "transformers"}.get(kind)
    if library:  # head tensors alone are no library's format: no library_name rather than a wrong one
        meta["library_name"] = library
    meta.update(base_license(spec))
    datasets = list(dict.fromkeys(d for d in (hub_dataset(s.get("source", "")) for s in sources) if d))
    if datasets:
        meta["datasets"] = datasets
    meta["tags"] = list(dict.fromkeys(["finetune", spec.method.name, spec.objective.name]))
    meta["pipeline_tag"] = "text-generation"
    return meta


# ------------------------------------------------------------------------------------------------- body


def shown_source(source: str) -> str:
    """A data source as the card names it: Hub datasets linked, local and s3 paths cut to the file's name."""
    hub = hub_dataset(source)
    if hub:
        return f"[{source}]({HUB}/datasets/{hub})"
    if source.startswith("builtin:"):
        return f"`{source}` (built into finetune)"
    if source.startswith("s3://"):
        return f"`{source.rstrip('/').rsplit('/', 1)[-1]}` (an s3 object)"
    return f"`{Path(source).name}` (a local file)"


def shown_model(spec: Any) -> str:
    base = hub_model(spec)
    if base:
        return f"[{base}]({HUB}/{base})"
    from sdk.core.modelref import TINY

    model_id = spec.model.id
    name = model_id if model_id.startswith(TINY) else Path(model_id).name
    return f"`{name}`" + (f" (file `{spec.model.gguf_file}`)" if spec.model.gguf_file else "")


def value(v: Any, missing: str = "none") -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v) or missing
    return missing if v is None else str(v)


def table(head: tuple[str, ...], rows: list[tuple[Any, ...]], missing: str = "none") -> str:
    def cell(v: Any) -> str:  # a regex of target modules (q_proj|v_proj) would otherwise split its row
        return value(v, missing).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def py(text: Any) -> str:
    """A Python literal of a string or a list of messages (JSON's string syntax is Python's), in double quotes."""
    import json

    return json.dumps(text, ensure_ascii=False)


def intro(ctx: Any, kind: str, summary: Any) -> str:
    spec = ctx.spec
    title = f"# {ctx.options.repo.rsplit('/', 1)[-1]}"
    made = (f"A {spec.method.name} fine-tune of {shown_model(spec)} ({spec.objective.name} objective), trained and "
            f"exported by finetune (run `{ctx.run.run_id}`).")
    held = {"peft_adapter": "the PEFT adapter; load it on top of the base model (below)",
            "whole_model": "the whole fine-tuned model",
            "head_tensors": "the trained output-head tensors (head.safetensors), which replace the base's head",
            "merged": "the adapter merged into its 16-bit base: a standalone transformers model"}[kind]
    lines = [title, "", *([spec.description, ""] if spec.description else []), made, "", f"This repo holds {held}."]
    merge = ctx.report.get("merge") or {}
    if kind == "merged" and merge:
        lines.append(f"Merged into the {value(merge.get('merged_into'))}; checked against the adapter on the run's "
                     f"eval prompts: max logit difference {value(merge.get('max_logit_diff'))} (tolerance "
                     f"{value(merge.get('tolerance'))}), top-1 agreement {value(merge.get('top1_agreement'))}.")
    return "\n".join(lines)


def method_section(spec: Any, summary: Any) -> str:
    from sdk.core.methods import method_of

    method = method_of(spec)
    settings = [(k, v) for k, v in spec.method.model_dump().items() if k != "name"]
    lines = ["## Method", "", f"**{spec.method.name}**" + (":" if settings else "")]
    if settings:
        lines += ["", table(("setting", "value"), settings)]
    quant = method.quantization(spec.method)
    if method.quantized_base and quant is not None:
        lines += ["", f"The frozen base was quantized to {quant.bits} bits (bitsandbytes) in training; the adapter "
                      "learned against those weights."]
    objective = {k: v for k, v in spec.objective.model_dump().items() if k != "name"}
    shown = ", ".join(f"{k} {value(v)}" for k, v in objective.items())
    lines += ["", f"- objective: **{spec.objective.name}**" + (f" ({shown})" if shown else "")]
    if summary is not None:
        lines.append(f"- trainable parameters: {summary.trainable_params:,} of {summary.total_params:,} "
                     f"({summary.trainable_percent:.3g}%)")
    return "\n".join(lines)


def data_section(spec: Any, summary: Any, sources: list[dict[str, Any]]) -> str:
    lines = ["## Training data", ""]
    if sources:
        rows = [(shown_source(s.get("source", "")), s.get("format"), s.get("rows"), s.get("eval_rows"),
                 s.get("train_rows"), s.get("weight"), f"`{s['sha256']}`" if s.get("sha256") else None)
                for s in sources]
        lines += [table(("source", "format", "rows read", "held out", "trained on", "weight", "sha256 of the rows"),
                        rows), "", "sha256: of the rows as read, each row as sorted-key JSON, one per line."]
    template = (summary.template if summary is not None else None) or spec.data.template
    instruction = (summary.instruction if summary is not None else None) or spec.data.instruction
    lines += ["", f"Prompt format: `{template}`" + (f"; instruction: \"{instruction}\"" if instruction else "")
              + (f"; system prompt: \"{spec.data.system_prompt}\"" if spec.data.system_prompt else "") + "."]
    if summary is not None and summary.tool_calling is not None:
        lines.append("Rows offered tools; the chat template they were rendered with is this repo's "
                     "chat_template.jinja.")
    return "\n".join(lines)


def train_section(spec: Any, summary: Any) -> str:
    t = spec.train
    world = summary.world_size if summary is not None else 1
    precision = t.precision if summary is None or summary.precision == t.precision else \
        f"{t.precision} → {summary.precision}"
    optimizer = (summary.features.optimizer if summary is not None else None) or t.optimizer
    rows = [("learning rate", t.lr), ("length", t.length),
            ("steps run", summary.steps if summary is not None else None),
            ("batch size per device", t.batch_size), ("gradient accumulation", t.grad_accum),
            ("effective batch", t.batch_size * t.grad_accum * world), ("scheduler", t.scheduler),
            ("warmup", f"{t.warmup_steps} steps" if t.warmup_steps else
             f"ratio {t.warmup_ratio:g}" if t.warmup_ratio else None),
            ("optimizer", optimizer), ("weight decay", t.weight_decay), ("max grad norm", t.max_grad_norm),
            ("precision", precision), ("max length", spec.data.max_length), ("seed", t.seed)]
    return "## Hyperparameters\n\n" + table(("setting", "value"), rows)


def _score(score: Any) -> str | None:
    return None if score is None else f"{score.accuracy:.3f} ({score.correct}/{score.total})"


def results_section(summary: Any) -> str | None:
    if summary is None:
        return None
    rows: list[tuple[Any, ...]] = []
    la = summary.label_accuracy
    if la.before is not None or la.after is not None:
        rows.append(("label accuracy", _score(la.before), _score(la.after)))
    gm = summary.generation_metrics
    before, after = (gm.before.means if gm.before else {}), (gm.after.means if gm.after else {})
    rows += [(name, before.get(name), after.get(name)) for name in sorted({*before, *after})]
    if summary.reward is not None:
        r_before, r_after = summary.reward.before, summary.reward.after
        rows.append(("held-out reward (mean)", r_before.mean if r_before else None, r_after.mean if r_after else None))
    if summary.forgetting is not None:
        rows.append(("general-text loss", summary.forgetting.before_loss, summary.forgetting.after_loss))
    if summary.eval_loss is not None:
        rows.append(("eval loss", None, summary.eval_loss))
    if summary.first_loss is not None or summary.last_loss is not None:
        rows.append(("training loss (first step → last)", summary.first_loss, summary.last_loss))
    lines = [f"## Results\n\nOn {summary.eval_rows} held-out rows; before: the base model, after: the fine-tune."]
    if rows:
        lines.append(table(("metric", "before", "after"), rows, missing="—"))
    if summary.judge is not None:
        j = summary.judge
        lines.append(f"Judge ({j.model}, {j.n} prompts, both orders): {j.wins} wins, {j.losses} losses, {j.ties} ties"
                     + (f"; win rate {j.win_rate:.3f}" if j.win_rate is not None else "") + ".")
    return "\n\n".join(lines)


def run_section(summary: Any) -> str | None:
    if summary is None:
        return None
    hw = summary.hardware
    device = f"{hw.count} × {hw.name}" if hw.name else hw.device
    versions = ", ".join(f"{k} {summary.versions[k]}" for k in ("torch", "transformers", "peft", "trl")
                         if k in summary.versions)
    rt = summary.runtime_s
    lines = ["## Training run", "", f"- hardware: {device}" + (f" ({summary.strategy}, {summary.world_size} "
                                                              "processes)" if summary.world_size > 1 else ""),
             f"- runtime: {rt.total_s:.0f} s in all, {rt.train_s:.0f} s training",
             f"- adapter size: {summary.adapter_bytes:,} bytes"]
    if versions:
        lines.append(f"- versions: {versions}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ usage


def prompt_lines(spec: Any, summary: Any) -> list[str]:
    """Python that writes `prompt` the way the run's training prompts were written: the results above were
    measured on prompts in that format, and a tune answers best in it."""
    from sdk.data.rendering import instruction_prompt

    template = (summary.template if summary is not None else None) or spec.data.template
    instruction = (summary.instruction if summary is not None else None) or spec.data.instruction
    if template == "chat":
        system = spec.data.system_prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": "Your text here"}]
        return [f"messages = {py(messages)}",
                "prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)"]
    if template == "plain":
        return [f"prompt = {py('Your text here')}"]
    text = instruction_prompt(instruction, "Your text here") if instruction else \
        instruction_prompt("Your instruction here", None)
    return [f"prompt = {py(text)}"]


def load_lines(spec: Any, repo: str, kind: str) -> tuple[list[str], list[str]]:
    """(imports, statements) that load this repo's model as `model`."""
    from sdk.core.methods import method_of

    if kind in ("merged", "whole_model"):
        return [], [f"model = AutoModelForCausalLM.from_pretrained({py(repo)})"]
    base = hub_model(spec)
    gguf = f", gguf_file={py(spec.model.gguf_file)}" if spec.model.gguf_file and base else ""
    if base:
        lines = [f"model = AutoModelForCausalLM.from_pretrained({py(base)}{gguf})"]
    else:  # not on the Hub: the reader points at their own copy
        lines = [f"model = AutoModelForCausalLM.from_pretrained(\"path/to/the/base/model\")  # "
                 f"{shown_model(spec).replace('`', '')}"]
    if kind == "head_tensors":
        return (["from huggingface_hub import hf_hub_download", "from safetensors.torch import load_file"],
                [*lines, f'model.load_state_dict(load_file(hf_hub_download({py(repo)}, "head.safetensors")), '
                         'strict=False)'])
    method = method_of(spec)
    quant = method.quantization(spec.method)
    if method.quantized_base and quant is not None:
        lines.insert(0, f"# trained against the base quantized to {quant.bits} bits (bitsandbytes): pass "
                        "quantization_config=BitsAndBytesConfig(...) to answer exactly as in training")
    return ["from peft import PeftModel"], [*lines, f"model = PeftModel.from_pretrained(model, {py(repo)})"]


def usage_section(spec: Any, summary: Any, repo: str, kind: str) -> str:
    new_tokens = spec.eval.max_new_tokens if spec.eval.labels else 128
    imports, load = load_lines(spec, repo, kind)
    code = [*imports, "from transformers import AutoModelForCausalLM, AutoTokenizer", "", *load,
            f"tokenizer = AutoTokenizer.from_pretrained({py(repo)})", "", *prompt_lines(spec, summary),
            'inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)',
            f"output = model.generate(**inputs, max_new_tokens={new_tokens}, do_sample=False)",
            'print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))']
    return "## Usage\n\n```python\n" + "\n".join(code) + "\n```"
