"""Why a prompt does not extend the earlier context it should, and where to splice it on.

A call whose messages repeat an earlier call's messages and output, but whose prompt ids do not
start with that call's prompt + completion ids, is a mismatch. Its kind:

- ``retoken``: the same text, other tokens (the sampled completion re-encoded differently);
- ``template``: the text differs: the chat template rendered the same messages another way
  (dropped earlier reasoning, re-serialised a tool call, trimmed whitespace);
- ``other``: no tokenizer was at hand to compare the texts.

Messages are compared by role, text (whitespace at the ends ignored) and tool calls (name and
arguments as parsed JSON); ids, names and reasoning fields are not compared.
"""

from __future__ import annotations

import json
from typing import Any

KINDS = ("template", "retoken", "other")


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") in (None, "text"):
                parts.append(str(part.get("text") or ""))
        return "".join(parts).strip()
    return str(content).strip()


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


def message_key(message: Any) -> tuple:
    """What makes two messages the same message for merging."""
    if not isinstance(message, dict):
        return ("?", str(message), ())
    return (message.get("role") or "assistant", _text(message.get("content")),
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


class ConversationIndex:
    """Which earlier call does a call's message history continue? Calls by the conversation
    they end with (their messages + output), hashed message by message, built lazily: only
    calls that do not simply continue an earlier context are looked up, and each call is
    hashed once."""

    def __init__(self, calls: list) -> None:
        self.calls = calls
        self.hashed = 0
        self.by_hash: dict[int, Any] = {}

    @staticmethod
    def _hashes(messages: list) -> list[int]:
        hashes, h = [], 0
        for message in messages:
            h = hash((h, message_key(message)))
            hashes.append(h)
        return hashes

    def previous(self, position: int) -> Any | None:
        """The latest call before ``calls[position]`` whose messages and output the messages
        of ``calls[position]`` repeat, the longest such conversation first."""
        for call in self.calls[self.hashed:position]:
            if call.output is not None:
                ends = [*call.messages, {"role": "assistant", **call.output}]
                self.by_hash[self._hashes(ends)[-1]] = call
        self.hashed = max(self.hashed, position)
        call = self.calls[position]
        hashes = self._hashes(call.messages)
        for n in range(len(hashes) - 2, -1, -1):
            found = self.by_hash.get(hashes[n])
            if found is not None and messages_extend(call.messages, found.messages, found.output):
                return found
        return None


def classify(context: list[int], prompt: list[int], tokenizer: Any | None) -> str:
    """The kind of a mismatch between an earlier call's context and a later prompt."""
    if tokenizer is None:
        return "other"
    decode = tokenizer.decode
    before = decode(context, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    after = decode(prompt, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return "retoken" if after.startswith(before) else "template"


def splice_offset(context: list[int], prompt: list[int], end_token: int | None) -> int | None:
    """Where the new part of ``prompt`` starts, after the re-rendered turns of ``context``.

    Turns end with the end-of-turn token (``<|im_end|>`` in ChatML) however the template
    renders them, so the turn that closes ``context`` is the k-th end-of-turn token of the
    prompt, k counted in ``context`` (plus one when the completion was cut before its own).
    A completion that ended with the token keeps it; one that did not gets the prompt's, as
    context. None when the prompt has too few such tokens to align on.
    """
    if end_token is None:
        return None
    closed = bool(context) and context[-1] == end_token
    k = context.count(end_token) + (0 if closed else 1)
    at = -1
    try:
        for _ in range(k):
            at = prompt.index(end_token, at + 1)
    except ValueError:
        return None
    return at + 1 if closed else at
