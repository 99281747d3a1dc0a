"""Why a prompt does not extend the earlier context it should, and where to splice it on.

A call whose messages repeat an earlier call's messages and output, but whose prompt ids do not
start with that call's prompt + completion ids, is a mismatch. Its kind:

- ``retoken``: the same text, other tokens (the sampled completion re-encoded differently);
- ``template``: the text differs: the chat template rendered the same messages another way
  (dropped earlier reasoning, re-serialised a tool call, trimmed whitespace);
- ``other``: no tokenizer was at hand to compare the texts.

Messages are compared as ``tracewheel.messages`` compares them.
"""

from __future__ import annotations

from typing import Any

from tracewheel.messages import message_key, messages_extend


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
