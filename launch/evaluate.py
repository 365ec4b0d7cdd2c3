"""Held-out rows answered by greedy generation: label accuracy (classification), generation metrics against the
references (sdk.evaluation.metrics), and side-by-side generations (base vs tuned)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from launch.data import Example


def _norm(text: str) -> str:
    return re.sub(r"[\s\.\!\,\;\:\"']+$", "", text.strip().lower())


def match_label(output: str, labels: list[str]) -> str | None:
    """The label the generated text starts with (longest first), or None."""
    first = _norm(output.strip().splitlines()[0] if output.strip() else "")
    for label in sorted(labels, key=len, reverse=True):
        if first.startswith(_norm(label)):
            return label
    return None


def prompt_text(tokenizer: Any, prompt: Any, tools: list[dict[str, Any]] | None = None) -> str:
    """Text as written, or chat turns (with the functions they offer) through the tokenizer's chat template."""
    if isinstance(prompt, list):  # chat turns
        return tokenizer.apply_chat_template(prompt, tools=tools or None, tokenize=False, add_generation_prompt=True)
    return prompt


def generate(model: Any, tokenizer: Any, prompts: list[Any], *, max_new_tokens: int, batch_size: int = 16,
             tools: list[dict[str, Any]] | None = None) -> list[str]:
    """Greedy completions, batched with left padding; `tools`: the functions every chat prompt offers."""
    import torch

    texts = [prompt_text(tokenizer, p, tools) for p in prompts]
    device = next(p.device for p in model.parameters())
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = out[:, batch["input_ids"].shape[1]:]
            outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


@dataclass
class LabelScore:
    accuracy: float
    correct: int
    total: int
    outputs: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total}


def label_accuracy(model: Any, tokenizer: Any, examples: list[Example], labels: list[str], *, max_new_tokens: int) -> LabelScore:
    outputs = generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens=max_new_tokens)
    return scored(examples, outputs, labels=labels, metrics=False).label


def side_by_side(examples: list[Example], base: list[str], tuned: list[str], n: int) -> list[dict[str, str]]:
    return [
        {"prompt": str(ex.prompt), "expected": ex.response, "base": b.strip(), "tuned": t.strip()}
        for ex, b, t in list(zip(examples, base, tuned, strict=True))[:n]
    ]


@dataclass
class Evaluation:
    """One model's greedy answers to the held-out prompts, and what they score."""

    outputs: list[str]
    label: LabelScore | None = None
    metrics: Any = None  # sdk.evaluation.metrics.Scores over the rows with a reference answer
    reward: Any = None  # sdk.core.summary.RewardScore: the objective's rewards of these answers (grpo)


def answer_tokens(spec: Any) -> int:
    """How long a held-out answer may be: eval.max_new_tokens, or the objective's own answer length if longer (a
    grpo answer is scored whole)."""
    from sdk.objectives import objective_of

    return max(spec.eval.max_new_tokens, objective_of(spec).answer_tokens(spec.objective))


def heldout_reward(spec: Any, examples: list[Example], outputs: list[str], *, files: dict[str, Any]) -> Any:
    """The objective's held-out rewards (grpo's) of the greedy answers to the held-out prompts, or None."""
    from sdk.core.summary import RewardScore
    from sdk.data.prompts import REFERENCE
    from sdk.evaluation.rewards import score_rows
    from sdk.objectives import objective_of

    items = objective_of(spec).heldout_rewards(spec.objective)
    answered = [(e, o) for e, o in zip(examples, outputs, strict=True) if e.prompt]
    if not items or not answered:
        return None
    rows = [{**(e.fields or {}), REFERENCE: (e.fields or {}).get(REFERENCE, e.response)} for e, _ in answered]
    scores = score_rows(items, answers=[o for _, o in answered], rows=rows, prompts=[e.prompt for e, _ in answered],
                        files=files)
    return RewardScore(mean=scores["mean"], means=scores["means"], n=len(answered))


def answer_all(model: Any, tokenizer: Any, examples: list[Example], *, max_new_tokens: int) -> list[str]:
    """Greedy answers, batched among the prompts that offer the same functions (most rows offer none)."""
    import json

    groups: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        if example.prompt:  # a plain-text document has no prompt to answer: nothing generated for it
            groups.setdefault(json.dumps(example.tools) if example.tools else "", []).append(index)
    outputs = [""] * len(examples)
    for key, indices in groups.items():
        answers = generate(model, tokenizer, [examples[i].prompt for i in indices], max_new_tokens=max_new_tokens,
                           tools=json.loads(key) if key else None)
        for i, answer in zip(indices, answers, strict=True):
            outputs[i] = answer
    return outputs


def scored(examples: list[Example], outputs: list[str], *, labels: list[str] | None, metrics: bool,
           tool_parser: str | None = "hermes") -> Evaluation:
    """Label accuracy when the spec names labels; the generation metrics of every row that has a prompt and a
    reference (text documents and KTO's undesirable answers have none). Tool calls are read from the text as the
    serving engine reads them (the hermes format; other parsers' calls are compared as text)."""
    from sdk.data.tools import parse_hermes_calls
    from sdk.evaluation.metrics import score, score_all

    label = None
    if labels:
        correct = sum(match_label(out, labels) == ex.response for out, ex in zip(outputs, examples, strict=True))
        label = LabelScore(correct / len(examples) if examples else 0.0, correct, len(examples), outputs)
    rows = []
    for example, output in zip(examples, outputs, strict=True):
        if not metrics or not example.prompt or not (example.response or example.calls):
            continue
        content, calls = parse_hermes_calls(output) if example.calls and tool_parser == "hermes" else (output, [])
        rows.append(score(content or "", example.response, answer_calls=calls, reference_calls=example.calls))
    return Evaluation(outputs, label, score_all(rows) if rows else None)


def general_text() -> list[str]:
    """The general-text sample shipped with the package (sdk/evaluation/general_text.txt): short paragraphs of
    everyday knowledge unrelated to any training task, for the forgetting check."""
    from importlib.resources import files

    text = files("sdk.evaluation").joinpath("general_text.txt").read_text(encoding="utf-8")
    return [block.strip() for block in text.split("\n\n") if block.strip()]


def text_loss(model: Any, tokenizer: Any, texts: list[str], *, max_length: int = 256, batch_size: int = 8) -> float:
    """Mean next-token loss per token over `texts` (each its own sequence, padding out of the loss): what the model
    still knows of general text. A tuned model's loss over the base's is the forgetting ratio."""
    import torch

    device = next(p.device for p in model.parameters())
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=max_length, add_special_tokens=False)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            logits = logits[:, -ids.shape[1]:]  # prompt and prefix tuning put virtual tokens in front
            losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                       reduction="none")
            keep = mask[:, 1:].reshape(-1).bool()
            total += float(losses[keep].sum())
            count += int(keep.sum())
    finally:
        model.train(was_training)
    return total / count if count else float("nan")


def shown_prompt(prompt: Any) -> str:
    """A prompt as a person reads it: the text, or the last user turn of chat turns."""
    if isinstance(prompt, list):
        users = [t["content"] for t in prompt if t.get("role") == "user"]
        return users[-1] if users else ""
    return str(prompt)


def judge_answers(judge: Any, examples: list[Example], before: Evaluation | None, after: Evaluation | None) -> dict[str, Any] | None:
    """eval.judge: the base's and the tuned model's answers to the same prompts, compared by the judge model in
    both orders (sdk.evaluation.judge). A judge that cannot be reached costs the run nothing but this score."""
    from sdk.evaluation.judge import DEFAULT_RUBRIC, Endpoint, judge_pairs

    if not (before and after):
        print("[finetune] warning: eval.judge needs the base's answers too (eval.before and eval.after)", flush=True)
        return None
    try:
        endpoint = Endpoint(judge.base_url, judge.model, api_key_env=judge.api_key_env, timeout=judge.timeout_s)
    except ValueError as exc:
        print(f"[finetune] warning: no judge: {exc}", flush=True)
        return None
    rows = [(shown_prompt(e.prompt), e.response or None, b.strip(), t.strip())
            for e, b, t in zip(examples, before.outputs, after.outputs, strict=True)][: judge.max_samples]
    result = judge_pairs(endpoint, rows, rubric=judge.rubric or DEFAULT_RUBRIC)
    print(f"[finetune] judge {judge.model}: tuned vs base over {result.n} prompts, {result.wins} won, {result.losses} "
          f"lost, {result.ties} tied ({result.inconsistent} split by position); win rate "
          f"{result.win_rate if result.win_rate is not None else '-'}"
          + (f"; {len(result.errors)} failed: {result.errors[0]}" if result.errors else ""), flush=True)
    return result.as_dict()


def probe_logits(model: Any, tokenizer: Any, example: Example, path: str) -> None:
    """Test seam (FINETUNE_PROBE_LOGITS=<file>): the trained model's logits for the first eval prompt, saved (a forward
    on every rank: a collective under ZeRO-3), so a test can check that the committed adapter, reloaded elsewhere,
    computes exactly what training ended with."""
    import torch

    from launch import ranks

    text = prompt_text(tokenizer, example.prompt, example.tools)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids.to(next(model.parameters()).device), use_cache=False).logits
    model.train(was_training)
    if ranks.is_main():
        torch.save({"text": text, "logits": logits.float().cpu()}, path)
