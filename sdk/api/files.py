"""An uploaded training file, checked line by line as OpenAI checks one on upload: one JSON object per line, in
one of its fine-tuning formats (chat `messages`, which a reinforcement row may end on the user's turn; DPO's
`input` / `preferred_output` / `non_preferred_output`; legacy `prompt` / `completion`), text only; an example that
sets `parallel_tool_calls: false` makes at most one tool call per assistant message. What a row must
hold for the job's method (an assistant answer to learn, a preference pair) is checked when the job is created, by
the same reader every run uses (sdk.data)."""

from __future__ import annotations

import json
from typing import Any

from sdk.api.errors import invalid

MAX_BYTES = 512 * 1024 * 1024  # OpenAI's limit for a fine-tuning file
MEDIA_PARTS = {"image_url": "images", "input_image": "images", "image": "images", "input_audio": "audio",
               "audio": "audio", "file": "files", "input_file": "files"}
FORMATS = "`messages` (chat), `input` + `preferred_output` + `non_preferred_output` (DPO) or `prompt` + `completion`"


def check_upload(data: bytes, *, filename: str) -> int:
    """The number of examples; an OpenAI-shaped 400 naming the first bad line."""
    if len(data) > MAX_BYTES:
        raise invalid(f"{filename}: {len(data)} bytes; a fine-tuning file is at most {MAX_BYTES} bytes",
                      param="file", code="file_too_large")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is no part of the first example
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise invalid(f"{filename}, line {line}: not UTF-8 text", param="file", code="invalid_file_format") from None
    examples = 0
    for number, line in enumerate(text.split("\n"), start=1):  # U+2028 and U+0085 are inside strings, not breaks
        if not line.strip():
            continue
        problem = line_problem(line)
        if problem:
            raise invalid(f"{filename}, line {number}: {problem}", param="file", code="invalid_file_format")
        examples += 1
    if not examples:
        raise invalid(f"{filename}: no examples (one JSON object per line)", param="file", code="invalid_file_format")
    return examples


def line_problem(line: str) -> str | None:
    try:
        row = json.loads(line)
    except ValueError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno}); write one example per line"
    if not isinstance(row, dict):
        return f"an example is a JSON object, not {type(row).__name__}"
    media = _media(row)
    if media:
        return f"{media}: only text is supported (images, audio and files are not trained on)"
    if "messages" in row:
        return _chat_problem(row["messages"], "messages") or _parallel_problem(row, {"messages": row["messages"]}, "")
    if "input" in row or "preferred_output" in row or "non_preferred_output" in row:
        missing = [k for k in ("input", "preferred_output", "non_preferred_output") if k not in row]
        if missing:
            return f"a DPO example needs {', '.join(missing)}"
        inp = row["input"]
        if not isinstance(inp, dict):
            return "input: an object with messages"
        return _chat_problem(inp.get("messages"), "input.messages") or _parallel_problem(inp, {
            "input.messages": inp.get("messages"), **{k: row[k] for k in ("preferred_output", "non_preferred_output")}},
            "input.")
    if "prompt" in row and "completion" in row:
        return None
    return f"no fine-tuning example: expected {FORMATS}"


def _chat_problem(messages: Any, where: str) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"{where}: a non-empty list of messages"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            return f"{where}[{index}]: a message is an object with a role"
        if message["role"] not in ("system", "developer", "user", "assistant", "tool", "function"):
            return f"{where}[{index}].role: {message['role']!r} is not a chat role"
    return None


def _parallel_problem(holder: dict[str, Any], messages: dict[str, Any], prefix: str) -> str | None:
    """OpenAI's rule: with `parallel_tool_calls: false` an assistant message makes at most one tool call."""
    flag = holder.get("parallel_tool_calls")
    if flag is None or flag is True:
        return None
    if flag is not False:
        return f"{prefix}parallel_tool_calls: true or false, not {json.dumps(flag)}"
    for where, listed in messages.items():
        for index, message in enumerate(listed if isinstance(listed, list) else []):
            calls = message.get("tool_calls") if isinstance(message, dict) else None
            if isinstance(calls, list) and len(calls) > 1:
                return (f"{where}[{index}].tool_calls: {len(calls)} calls in one assistant message, but the example "
                        f"sets {prefix}parallel_tool_calls: false (at most one call per message)")
    return None


def _media(node: Any, path: str = "") -> str | None:
    """The path of the first image, audio or file content part, if any."""
    if isinstance(node, dict):
        kind = node.get("type")
        if isinstance(kind, str) and kind in MEDIA_PARTS:
            return f"{path or 'row'} is {MEDIA_PARTS[kind]} ({kind})"
        for key, value in node.items():
            found = _media(value, f"{path}.{key}" if path else key)
            if found:
                return found
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found = _media(value, f"{path}[{index}]")
            if found:
                return found
    return None
