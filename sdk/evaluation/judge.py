"""A judge model through any OpenAI-compatible endpoint (`eval.judge`): for each held-out prompt it compares the
base model's answer with the tuned one twice, once in each position, so a judge that favours the first (or the
second) answer cannot make either side win. The tuned answer wins a prompt only when both orders prefer it; the
base wins only when both prefer the base; anything else is a tie, and a split verdict is counted as inconsistent.
Standard library only (the node calls it after training; the endpoint may be a `finetune serve` server)."""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_RUBRIC = ("You are judging two answers to the same request. Prefer the answer that is correct, follows the "
                  "request and is no longer than it needs to be.")


@dataclass
class JudgeResult:
    model: str
    n: int = 0  # prompts judged (both orders answered)
    wins: int = 0  # the tuned answer preferred in both orders
    losses: int = 0  # the base answer preferred in both orders
    ties: int = 0  # anything else
    inconsistent: int = 0  # of the ties: each order preferred its first (or its second) answer
    errors: list[str] = field(default_factory=list)  # requests that failed or verdicts that could not be read

    @property
    def win_rate(self) -> float | None:
        """Wins plus half the ties, over the prompts judged."""
        return (self.wins + 0.5 * self.ties) / self.n if self.n else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors[:5], "error_count": len(self.errors), "win_rate": self.win_rate}


def judge_prompt(rubric: str, question: str, reference: str | None, first: str, second: str) -> str:
    parts = [rubric, f"Request:\n{question}"]
    if reference:
        parts.append(f"Reference answer:\n{reference}")
    parts += [f"Answer A:\n{first}", f"Answer B:\n{second}",
              "Which answer is better? Reply with exactly one word: A, B or tie."]
    return "\n\n".join(parts)


def read_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from the judge's reply (its first word, or the one after 'Answer'; case and punctuation
    aside); None when it is none of them."""
    words = [w.strip(".,:;!\"'()*").lower() for w in text.split()]
    if words and words[0] == "answer":
        words = words[1:]
    return {"a": "A", "b": "B", "tie": "tie"}.get(words[0]) if words else None


class Endpoint:
    """POST /chat/completions of an OpenAI-compatible server, greedy, with the key from an environment variable."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None, timeout: float = 60, max_tokens: int = 4):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.max_tokens = model, timeout, max_tokens
        self.key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self.key:
            raise ValueError(f"eval.judge.api_key_env: {api_key_env} is not set where the run executes")

    def ask(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.key}"} if self.key else {})}
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as reply:  # noqa: S310 - the user's own endpoint
            return json.loads(reply.read())["choices"][0]["message"]["content"] or ""


def judge_pairs(endpoint: Any, rows: list[tuple[str, str | None, str, str]], *, rubric: str = DEFAULT_RUBRIC) -> JudgeResult:
    """`rows`: (question, reference, base answer, tuned answer). Each asked in both orders."""
    result = JudgeResult(model=getattr(endpoint, "model", "judge"))
    for index, (question, reference, base, tuned) in enumerate(rows):
        verdicts = []
        for first, second in ((base, tuned), (tuned, base)):
            try:
                reply = endpoint.ask(judge_prompt(rubric, question, reference, first, second))
            except (OSError, ValueError, KeyError, IndexError) as exc:  # URLError and timeouts are OSErrors
                result.errors.append(f"row {index + 1}: {type(exc).__name__}: {exc}")
                verdicts.append(None)
                continue
            verdict = read_verdict(reply)
            if verdict is None:
                result.errors.append(f"row {index + 1}: the judge replied {reply[:60]!r}, not A, B or tie")
            verdicts.append(verdict)
        if None in verdicts:
            continue
        base_first, tuned_first = verdicts  # order 1: A = base; order 2: A = tuned
        result.n += 1
        if base_first == "B" and tuned_first == "A":
            result.wins += 1
        elif base_first == "A" and tuned_first == "B":
            result.losses += 1
        else:
            result.ties += 1
            if base_first == tuned_first and base_first in ("A", "B"):
                result.inconsistent += 1
    return result
