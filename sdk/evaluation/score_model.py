"""OpenAI's score_model grader: the rendered messages to any OpenAI-compatible chat endpoint, the score read from
its reply (OpenAI's {"result": x}, a bare number, or a number after "score", "result" or "rating"), clamped into the
grader's range. Retried on 429, 5xx and timeouts; standard library only, like sdk.evaluation.judge."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any

from sdk.evaluation.graders import GraderError, UnreadableScore, finite_number, one_line, render
from sdk.evaluation.metrics import parse_json

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BARE = re.compile(_NUMBER)
_OUT_OF = re.compile(rf"({_NUMBER})\s+out of\b", re.IGNORECASE)
_NAMED = re.compile(rf"(?:score|result|rating)\W{{0,3}}({_NUMBER})(?!\s*/)", re.IGNORECASE)


def read_score(text: str) -> float | None:
    """The score in a grader model's reply: OpenAI's {"result": x, ...}, a bare number, or the last number written
    after "score", "result" or "rating" (a reasoning step's "Step 1" or a "7/10" is not a score); None otherwise."""
    try:
        parsed = parse_json(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and finite_number(parsed.get("result")) is not None:
        return finite_number(parsed["result"])
    if finite_number(parsed) is not None and not isinstance(parsed, bool):
        return finite_number(parsed)
    if _BARE.fullmatch(text.strip()):
        return float(text.strip())
    named = _NAMED.findall(text) or _OUT_OF.findall(text)
    return float(named[-1]) if named else None


def _content(content: Any, *, sample: dict[str, Any], item: dict[str, Any]) -> Any:
    if isinstance(content, str):
        return render(content, sample=sample, item=item)
    parts = content if isinstance(content, list) else [content]
    return [{"type": "text", "text": render(part.text, sample=sample, item=item)} for part in parts]


def chat_request(grader: Any, *, sample: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body: the rendered messages and the grader's sampling parameters."""
    # OpenAI's developer role is sent as system: most OpenAI-compatible servers' chat templates know only
    # system, user and assistant
    messages = [{"role": "system" if m.role == "developer" else m.role,
                 "content": _content(m.content, sample=sample, item=item)} for m in grader.input]
    params = grader.sampling_params
    body: dict[str, Any] = {"model": grader.model, "messages": messages,
                            "temperature": 0 if params is None or params.temperature is None else params.temperature}
    if params is not None:
        extra = {"top_p": params.top_p, "seed": params.seed, "max_tokens": params.max_completions_tokens,
                 "reasoning_effort": params.reasoning_effort}
        body.update({key: value for key, value in extra.items() if value is not None})
    return body


def api_key(grader: Any) -> str | None:
    if not grader.api_key_env:
        return None
    key = os.environ.get(grader.api_key_env)
    if not key:
        raise GraderError(f"score_model grader {grader.name!r}: api_key_env {grader.api_key_env} is not set where "
                          "the run executes")
    return key


RETRIES = 3  # a 429, a 5xx or a timeout is tried again after 1, 2, 4 s (or the endpoint's Retry-After, up to 30 s)


def _retry_after(exc: BaseException, attempt: int) -> float | None:
    """Seconds to wait before trying again, or None when the failure will not pass by itself."""
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code != 429 and exc.code < 500:
            return None
        header = exc.headers.get("Retry-After") if exc.headers else None
        if header and header.strip().isdigit():
            return min(float(header), 30.0)
    elif not isinstance(exc, (TimeoutError, urllib.error.URLError, ConnectionError)):
        return None
    return float(2**attempt)


_sleep = time.sleep  # the wait between tries (tests replace it)


def post_chat(url: str, body: dict[str, Any], *, key: str | None, timeout: float) -> str:
    """The reply's message text; OSError (URLError, HTTPError, timeouts), ValueError or LookupError on failure."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    for attempt in range(RETRIES + 1):
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 - the user's own endpoint
                return json.loads(reply.read())["choices"][0]["message"]["content"] or ""
        except OSError as exc:
            wait = _retry_after(exc, attempt)
            if wait is None or attempt == RETRIES:
                raise
            _sleep(wait)
    raise AssertionError("unreachable")


def _failure(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        body = exc.read().decode(errors="replace") if exc.fp is not None else ""
        return f"HTTP {exc.code} {exc.reason}{': ' + ' '.join(body.split())[:200] if body else ''}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"no reply within {timeout:g}s (timeout_s)"
    if isinstance(exc, (LookupError, ValueError)):
        return f"not a chat completions reply ({one_line(exc)})"
    return one_line(reason) if isinstance(reason, BaseException) else str(reason)


def score_model(grader: Any, *, sample: dict[str, Any], item: dict[str, Any]) -> float:
    url = grader.base_url.rstrip("/") + "/chat/completions"
    body = chat_request(grader, sample=sample, item=item)
    try:
        text = post_chat(url, body, key=api_key(grader), timeout=grader.timeout_s)
    except (OSError, ValueError, LookupError, TypeError) as exc:  # URLError, HTTPError and timeouts are OSErrors
        raise GraderError(f"score_model grader {grader.name!r}: {url}: {_failure(exc, grader.timeout_s)}") from None
    score = read_score(text)
    if score is None:
        raise UnreadableScore(f"score_model grader {grader.name!r}: the reply {text[:80]!r} holds no score")
    low, high = grader.range
    return min(max(score, low), high)


# -------------------------------------------------------------------------------------------- one grader
