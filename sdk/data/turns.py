"""Chat turns as rows write them: OpenAI's role/content (content as text or a list of content parts) and
ShareGPT's from/value, read into {role, content[, weight]} and checked (roles alternate, the right turn last).
Used by every row format that holds turns (sdk.data.formats)."""

from __future__ import annotations

from typing import Any

from sdk.data.rows import RowError  # defined with the rows (formats imports it from here too)
from sdk.data.tools import read_tool_calls

# OpenAI's `developer` role is its newer name for system instructions (chat templates know only system).
ROLES = {"system": "system", "developer": "system", "user": "user", "human": "user", "assistant": "assistant",
         "gpt": "assistant"}
TOOL_ROLES = {"tool": "tool", "observation": "tool", "function_call": "assistant"}  # OpenAI's and ShareGPT's
KNOWN_ROLES = "system (or developer), user (or human), assistant (or gpt)"
KNOWN_TOOL_ROLES = KNOWN_ROLES + ", tool (or observation), function_call"


def read_turns(value: Any, name: str, *, weights: bool = False, tools: bool = False) -> list[dict[str, Any]]:
    """Chat turns as {role, content[, weight]}; ShareGPT's from/value and human/gpt are read too. With `tools`,
    also the assistant's calls ({role: assistant, content, tool_calls}) and their results ({role: tool, content,
    tool_call_id?}), from OpenAI's form or ShareGPT's function_call / observation turns (sdk.data.tools)."""
    if not isinstance(value, list):
        raise RowError(f"{name!r} must be a list of turns, not {type(value).__name__}")
    if not value:
        raise RowError(f"{name!r} has no turns")
    return [_read_turn(turn, f"{name}[{index}]", weights=weights, tools=tools) for index, turn in enumerate(value)]


def _role_of(turn: dict[str, Any], where: str, tools: bool) -> tuple[str, str | None]:
    """The turn's role, and the word the row wrote for it."""
    role_key = "role" if "role" in turn else "from" if "from" in turn else None
    if role_key is None:
        raise RowError(f"{where}: missing field 'role' (or ShareGPT's 'from')")
    word = str(turn[role_key]).strip().lower() if isinstance(turn[role_key], str) else None
    role = ROLES.get(word or "") or (TOOL_ROLES.get(word or "") if tools else None)
    if role is None:
        if word in TOOL_ROLES:
            raise RowError(f"{where}: a {word} turn: tool calls are trained from chat rows (messages or "
                           "conversations with a 'tools' column) under objective sft, not in these rows")
        raise RowError(f"{where}: unknown role {turn[role_key]!r} (known: {KNOWN_TOOL_ROLES if tools else KNOWN_ROLES})")
    if not tools and (turn.get("tool_calls") or turn.get("function_call")):
        raise RowError(f"{where}: a tool call: tool calls are trained from chat rows (messages or conversations with "
                       "a 'tools' column) under objective sft, not in these rows")
    if tools and turn.get("function_call") is not None and turn.get("tool_calls") is None:
        raise RowError(f"{where}: 'function_call' is OpenAI's retired form; write it as tool_calls: [{{id, type: "
                       "function, function: {name, arguments}}] with the functions in a 'tools' column")
    return role, word


def _calls_of(turn: dict[str, Any], where: str, word: str | None, role: str, content_key: str | None, tools: bool) -> Any:
    """An assistant turn's calls (OpenAI's tool_calls, or a ShareGPT function_call turn's value); None for others."""
    if word == "function_call":  # ShareGPT: the turn's value is the call(s) as JSON
        return read_tool_calls(turn.get(content_key), f"{where}.{content_key}") if content_key else None
    if tools and role == "assistant" and turn.get("tool_calls"):  # [] is no call, as vLLM reads it
        return read_tool_calls(turn["tool_calls"], f"{where}.tool_calls")
    return None


def _read_turn(turn: Any, where: str, *, weights: bool, tools: bool) -> dict[str, Any]:
    if not isinstance(turn, dict):
        raise RowError(f"{where}: a turn must be an object with role and content, not {type(turn).__name__}")
    role, word = _role_of(turn, where, tools)
    content_key = "content" if "content" in turn else "value" if "value" in turn else None
    calls = _calls_of(turn, where, word, role, content_key, tools)
    if content_key is None and calls is None:
        raise RowError(f"{where}: missing field 'content' (or ShareGPT's 'value')")
    if calls is not None:
        raw = turn.get("content") if word != "function_call" else None
        content = "" if raw is None else read_content(raw, f"{where}.content")
    elif turn[content_key] is None:
        raise RowError(f"{where}: {role} turn with no content (null)" + (" and no tool_calls" if role == "assistant" else ""))
    else:
        content = read_content(turn[content_key], f"{where}.{content_key}")
    out: dict[str, Any] = {"role": role, "content": content}
    if calls is not None:
        out["tool_calls"] = calls
    if role == "tool" and isinstance(turn.get("tool_call_id"), str):
        out["tool_call_id"] = turn["tool_call_id"]
    if "weight" in turn:
        if not weights:
            raise RowError(f"{where}: 'weight' marks SFT turns of OpenAI chat rows (messages), not these")
        if turn["weight"] not in (0, 1) or isinstance(turn["weight"], bool):
            raise RowError(f"{where}: weight must be 0 or 1, not {turn['weight']!r}")
        if role != "assistant":
            raise RowError(f"{where}: weight is only for assistant turns, not {role}")
        out["weight"] = int(turn["weight"])
    return out


TEXT_PARTS = {"text": "text", "refusal": "refusal"}  # part type -> the key holding its text


def read_content(value: Any, name: str) -> str:
    """A turn's content: text, or OpenAI's list of content parts with the non-empty text parts joined by newlines
    (vLLM's chat endpoint does the same for a text model's template, so a row trains as the served request reads)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise RowError(f"{name} must be text or a list of content parts, not {type(value).__name__}")
    texts = []
    for index, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str) or kind not in TEXT_PARTS:
            if not isinstance(part, dict):
                raise RowError(f"{name}[{index}]: a content part must be an object with type and text, "
                               f"not {type(part).__name__}")
            raise RowError(f"{name}[{index}]: a part of type {kind!r}: only text parts can be trained (text models; "
                           "images, audio and files are not supported), drop the part or the row")
        text = part.get(TEXT_PARTS[kind])
        if not isinstance(text, str):
            raise RowError(f"{name}[{index}]: a {kind} part needs {TEXT_PARTS[kind]!r} as text")
        if text:  # vLLM skips an empty part rather than joining it as a blank line
            texts.append(text)
    if not value:
        raise RowError(f"{name} is an empty list of content parts")
    return "\n".join(texts)


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeio" else f"a {word}"  # a user, a system, an assistant


def check_turns(turns: list[dict[str, Any]], name: str, *, ends_with: str) -> None:
    """System first (optional), then user and assistant alternating, ending as asked; no empty turn. An
    assistant's tool calls are followed by their results (tool turns), then the assistant again."""
    expected = {"user"}
    for index, turn in enumerate(turns):
        role = turn["role"]
        if role == "system":
            if index != 0:
                raise RowError(f"{name}[{index}]: a system turn may only come first")
            continue
        if role not in expected:
            previous = turns[index - 1] if index else None
            if role == "tool":
                raise RowError(f"{name}[{index}]: a tool result without a call before it")
            if previous is not None and previous.get("tool_calls"):
                raise RowError(f"{name}[{index}]: the assistant's tool call gets no tool result before this {role} turn")
            raise RowError(f"{name}[{index}]: roles do not alternate: {role} after {previous['role'] if previous else 'the start'}")
        if role != "tool" and not turn.get("tool_calls") and not turn["content"].strip():
            raise RowError(f"{name}[{index}]: empty {role} turn")
        if role == "user":
            expected = {"assistant"}
        elif role == "assistant":
            expected = {"tool"} if turn.get("tool_calls") else {"user"}
        else:
            expected = {"tool", "assistant"}
    last = turns[-1]["role"]
    if last != ends_with:
        if last == "tool":
            raise RowError(f"{name}: ends with a tool result; a training conversation ends with the assistant's turn")
        if ends_with == "assistant":
            raise RowError(f"{name}: ends with {_a(last)} turn; a training conversation ends with the assistant's answer")
        raise RowError(f"{name}: ends with {_a(last)} turn; a prompt ends with the user's turn")


def read_response(value: Any, name: str) -> str:
    """A preference response: text, one assistant turn, or a list holding one."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"empty {name!r}")
        return value
    if isinstance(value, dict):
        value = [value]
    turns = read_turns(value, name)
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        raise RowError(f"{name!r} must be one assistant turn (the response), not {len(turns)} turns "
                       f"({', '.join(t['role'] for t in turns)}); put the conversation before it in the prompt")
    if not turns[0]["content"].strip():
        raise RowError(f"{name}[0]: empty assistant turn")
    return turns[0]["content"]
