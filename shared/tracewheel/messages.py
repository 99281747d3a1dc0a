"""Chat messages compared as the same message: by role, text (whitespace at the ends ignored)
and tool calls (name, and arguments as parsed JSON); ids, names and reasoning fields are not
compared. ctx-merge finds continuing calls with this, and the recorder continues them."""

from __future__ import annotations

import json
from typing import Any


def content_text(content: Any) -> str:
    """A message's content (or a tool result, a final answer) as plain text, the one way every
    tool reads it: a string as it is; the text of a list's text blocks, one per line (other
    blocks, images say, have no text); a text block's text; any other value as JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [content_text(block) if isinstance(block, (str, dict)) else ""
                 for block in content]
        return "\n".join(p for p in parts if p)
    if isinstance(content, dict) and ("type" in content or "text" in content):
        if content.get("type", "text") != "text":
            return ""
        return str(content.get("text") or content.get("content") or "")
    return json.dumps(content, ensure_ascii=False, default=str)


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value.strip()
    return value


def _tool_calls(message: dict) -> tuple:
    calls = []
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        fn = call.get("function") if isinstance(call.get("function"), dict) else call
        args = json.dumps(_arguments(fn.get("arguments")), sort_keys=True, ensure_ascii=False)
        calls.append((fn.get("name"), args))
    return tuple(calls)


def tools_key(tools: Any) -> str:
    """A tool list as one comparable value: the same tools, the same key (no tools: ``[]``)."""
    return json.dumps(tools or [], sort_keys=True, ensure_ascii=False)


def message_key(message: Any) -> tuple:
    """What makes two messages the same message."""
    if not isinstance(message, dict):
        return ("?", str(message), ())
    return (message.get("role") or "assistant", content_text(message.get("content")).strip(),
            _tool_calls(message))


def messages_extend(later: list, earlier: list, output: dict | None) -> bool:
    """Do ``later`` messages repeat ``earlier`` ones followed by that call's ``output``?"""
    n = len(earlier)
    if len(later) <= n:
        return False
    if any(message_key(a) != message_key(b) for a, b in zip(later[:n], earlier, strict=True)):
        return False
    if output is None:
        return isinstance(later[n], dict) and later[n].get("role") == "assistant"
    return message_key(later[n]) == message_key({"role": "assistant", **output})
