"""Token in, token out: a chat request that continues an earlier call is sent as token ids.

The agent sends messages; rendered again by the chat template, the turns it already had no
longer need to be the tokens the model sampled (tool-call JSON re-serialised, whitespace the
agent trimmed, a guided-decoding reply rendered as a hermes tool call). Then the later call's
prompt does not extend the earlier context, and ctx-merge cannot train the calls as one
sequence. So, per session and agent, a request whose messages are an earlier call's messages,
then that call's output, then new messages (tools the same; compared as
``tracewheel.messages`` compares them, the output also by its tool calls' ids) gets as its
prompt: that call's prompt ids + completion ids (+ the end-of-turn token where the completion
was cut before it) + the tokens of the new messages only, rendered with the same template.
That prompt goes to vLLM's completions API as token ids; the reply is turned back into a chat
completion, tool calls parsed the way the template writes them (hermes ``<tool_call>`` JSON,
as vLLM's ``hermes`` parser reads them).

A request that continues nothing, or that needs what only the chat API does (guided tool
choice, ``response_format``, template options), goes to vLLM as a chat request, as before; its
record says ``tokens: rendered`` and, where it continued a call, why.
"""

from __future__ import annotations

import json
import re
import uuid
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from tracewheel.chat_template import encode, render, server_tools
from tracewheel.messages import message_key, tools_key

MAX_SESSIONS = 4096  # timelines kept for `rollout record`, whose sessions never say they ended

# Chat request keys that mean the same in vLLM's completions API.
SAME_IN_COMPLETIONS = {
    "temperature", "top_p", "top_k", "min_p", "n", "seed", "stop", "stop_token_ids",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "min_tokens",
    "ignore_eos", "stream", "stream_options", "user", "bad_words", "length_penalty",
    "include_stop_str_in_output", "skip_special_tokens", "spaces_between_special_tokens",
    "priority", "request_id", "cache_salt", "allowed_token_ids", "truncate_prompt_tokens",
    "max_tokens",
}
# Chat request keys the continued request handles itself.
HANDLED = {"model", "messages", "tools", "tool_choice", "parallel_tool_calls", "logprobs",
           "top_logprobs", "max_completion_tokens", "return_token_ids"}
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)
TOOL_CALL_START = "<tool_call>"


@dataclass
class FinishedCall:
    """A finished call a later request may continue."""

    call_id: str
    messages: list
    tools_key: str
    output: dict
    prompt_ids: array
    completion_ids: array
    continuable: bool = True   # False: its prompt is not what this side's template renders


@dataclass
class Plan:
    """How one request's prompt is made."""

    prompt_ids: list[int] | None = None   # None: rendered by the server (a chat request)
    continues: str | None = None          # the call id it continues
    drift: int = 0                        # tokens the rendered prompt would have had otherwise
    reason: str | None = None             # why a continuing request was rendered after all


def _call_ids(message: Any) -> list:
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    return [c.get("id") for c in calls or [] if isinstance(c, dict)]


def _is_output(message: Any, key: tuple, output: dict) -> bool:
    """Is ``message`` the agent's copy of a call's output? The same message, or the same tool
    calls by the ids the server gave them (an agent may rewrite arguments it could not use;
    the model still sampled what it sampled)."""
    if key == message_key({"role": "assistant", **output}):
        return True
    ids = _call_ids(message)
    return bool(ids) and None not in ids and ids == _call_ids(output)


class Continuation:
    """Timelines of finished calls by (session, agent), and the prompts that continue them."""

    def __init__(self, tokenizer: Any, template: str | None, max_model_len: int | None = None):
        self.tokenizer = tokenizer
        self.template = template
        self.max_model_len = max_model_len
        self.timelines: OrderedDict[tuple[str, str | None], list[FinishedCall]] = OrderedDict()
        specials = [t for t in tokenizer.all_special_tokens if t]
        self._specials = sorted(set(specials), key=len, reverse=True)
        self.template_disagrees = False  # set once a rendered prompt differs from the server's

    # --- timelines ---------------------------------------------------------------------------

    def add(self, session: str, agent: str | None, turn: FinishedCall) -> None:
        key = (session, agent)
        self.timelines.setdefault(key, []).append(turn)
        self.timelines.move_to_end(key)
        while len(self.timelines) > MAX_SESSIONS:
            self.timelines.popitem(last=False)

    def forget(self, session: str) -> None:
        for key in [k for k in self.timelines if k[0] == session]:
            del self.timelines[key]

    def previous(self, session: str, agent: str | None, messages: list,
                 tools: list | None) -> FinishedCall | None:
        """The latest call of the timeline whose messages and output ``messages`` repeat, the
        longest conversation first."""
        turns = self.timelines.get((session, agent))
        if not turns:
            return None
        keys = [message_key(m) for m in messages]
        tkey = tools_key(tools)
        best = None
        for turn in turns:
            n = len(turn.messages)
            if (turn.tools_key == tkey and len(keys) > n + 1
                    and (best is None or n >= len(best.messages))
                    and _is_output(messages[n], keys[n], turn.output)
                    and all(message_key(m) == k for m, k in zip(turn.messages, keys[:n],
                                                                strict=True))):
                best = turn
        return best

    # --- prompts -----------------------------------------------------------------------------

    def unsupported(self, body: dict) -> str | None:
        """Why this request must go to the chat API, or None."""
        for key in body:
            if key not in SAME_IN_COMPLETIONS and key not in HANDLED:
                return f"the request sets {key!r}"
        if body.get("tool_choice") not in (None, "auto", "none"):
            return "tool_choice other than auto or none needs the server's guided decoding"
        return None

    def plan(self, session: str, agent: str | None, body: dict) -> Plan:
        messages, tools = body.get("messages") or [], server_tools(body.get("tools"))
        turn = self.previous(session, agent, messages, tools)
        if turn is None:
            return Plan()
        if not turn.continuable:
            return Plan(reason="the call it continues was rendered differently by the server")
        reason = self.unsupported(body)
        if reason:
            return Plan(reason=reason)
        try:
            return self._continue(turn, messages, tools)
        except Exception as err:  # a template that cannot render these messages: the server
            return Plan(reason=f"the chat template cannot render the messages ({err})")

    def _continue(self, turn: FinishedCall, messages: list, tools: list | None) -> Plan:
        # The earlier turns as that call had them: only where its rendering ends matters here.
        n = len(turn.messages)
        head = [*turn.messages, {"role": "assistant", **turn.output}]
        full_messages = [*head, *messages[n + 1:]]
        opened = render(self.tokenizer, turn.messages, tools, self.template, True)
        closed = render(self.tokenizer, head, tools, self.template, False)
        full = render(self.tokenizer, full_messages, tools, self.template, True)
        if not (closed.startswith(opened) and full.startswith(closed)):
            return Plan(reason="the chat template does not render this conversation "
                               "append-only (`rollout check-template` shows where)")
        end, tail = self._end_of_turn(closed[len(opened):])
        ids = list(turn.prompt_ids) + list(turn.completion_ids)
        if end is not None and (not ids or ids[-1] != end):
            ids.append(end)  # a completion cut before its end-of-turn token gets the template's
        ids += encode(self.tokenizer, tail + full[len(closed):])
        rendered = encode(self.tokenizer, render(self.tokenizer, messages, tools,
                                                 self.template, True))
        return Plan(prompt_ids=ids, continues=turn.call_id, drift=_drift(ids, rendered))

    def _end_of_turn(self, turn_text: str) -> tuple[int | None, str]:
        """The special token that closes an assistant turn in the template, and the text the
        template writes after it (ChatML: ``<|im_end|>`` and a newline)."""
        best, where = None, -1
        for token in self._specials:
            at = turn_text.rfind(token)
            if at > where:
                best, where = token, at
        if best is None:
            return None, ""
        return self.tokenizer.convert_tokens_to_ids(best), turn_text[where + len(best):]

    def agrees(self, body: dict, prompt_ids: list[int]) -> bool:
        """Does this side's template render the request as the server did?"""
        try:
            mine = encode(self.tokenizer, render(self.tokenizer, body.get("messages") or [],
                                                 server_tools(body.get("tools")),
                                                 self.template, True))
        except Exception:
            return False
        return mine == list(prompt_ids)

    def completion_body(self, body: dict, prompt_ids: list[int]) -> dict:
        """The chat request as a completions request with a token-id prompt."""
        out = {k: v for k, v in body.items() if k in SAME_IN_COMPLETIONS}
        out["model"] = body.get("model")
        out["prompt"] = prompt_ids
        out["logprobs"] = int(body.get("top_logprobs") or 0)
        out["return_token_ids"] = True
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if limit is None and self.max_model_len:
            limit = self.max_model_len - len(prompt_ids)  # the chat API's default
        out["max_tokens"] = limit
        if body.get("tools") and body.get("tool_choice") != "none":
            out.setdefault("skip_special_tokens", False)  # as vLLM does for tool parsing
        return out


def _drift(ids: list[int], rendered: list[int]) -> int:
    """Tokens that differ between two prompts: their length less the common ends."""
    start = 0
    limit = min(len(ids), len(rendered))
    while start < limit and ids[start] == rendered[start]:
        start += 1
    end = 0
    while end < limit - start and ids[-1 - end] == rendered[-1 - end]:
        end += 1
    return max(len(ids), len(rendered)) - start - end


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """Content and tool calls of sampled text, as vLLM's hermes parser reads them: text before
    the first ``<tool_call>`` is the content; text that does not parse is all content."""
    if TOOL_CALL_START not in text:
        return text, []
    try:
        calls = []
        for match in _TOOL_CALL.findall(text):
            call = json.loads(match[0] or match[1])
            calls.append({"id": f"chatcmpl-tool-{uuid.uuid4().hex[:24]}", "type": "function",
                          "function": {"name": call["name"],
                                       "arguments": json.dumps(call["arguments"],
                                                               ensure_ascii=False)}})
    except (ValueError, KeyError, TypeError):
        return text, []
    content = text[:text.find(TOOL_CALL_START)]
    return content or None, calls


def parses_tools(body: dict) -> bool:
    return bool(body.get("tools")) and body.get("tool_choice") != "none"


def held_back(text: str) -> int:
    """How many characters at the end of ``text`` may begin ``<tool_call>`` (kept back from a
    stream until the next text tells)."""
    for size in range(min(len(text), len(TOOL_CALL_START) - 1), 0, -1):
        if TOOL_CALL_START.startswith(text[-size:]):
            return size
    return 0


# A conversation with every kind of turn an agent's timeline has, for `rollout check-template`.
SAMPLE_TOOLS = [{"type": "function", "function": {
    "name": "execute_python_code", "description": "Run Python code and return what it prints.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                   "required": ["code"]}}}]
SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You are a careful math assistant."},
    {"role": "user", "content": "What is 17 * 23?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call-1", "type": "function", "function": {
            "name": "execute_python_code", "arguments": "{\"code\": \"print(17 * 23)\"}"}}]},
    {"role": "tool", "tool_call_id": "call-1", "content": "391"},
    {"role": "assistant", "content": "Let me check it another way.", "tool_calls": [
        {"id": "call-2", "type": "function", "function": {
            "name": "execute_python_code", "arguments": "{\"code\": \"print(17 * 20 + 51)\"}"}}]},
    {"role": "tool", "tool_call_id": "call-2", "content": "391"},
    {"role": "assistant", "content": "17 * 23 = \\boxed{391}"},
    {"role": "user", "content": "And 391 / 17?"},
    {"role": "assistant", "content": "\\boxed{23}"},
]


def record_conversations(record: dict) -> list[tuple[list, list | None]]:
    """The conversations of a record: a rollout's calls (messages + output), else a task's
    messages; each with its tools."""
    if isinstance(record.get("calls"), list):
        out = []
        for call in record["calls"]:
            messages = list(call.get("messages") or [])
            if isinstance(call.get("output"), dict):
                messages.append({"role": "assistant", **call["output"]})
            out.append((messages, call.get("tools")))
        return out
    if isinstance(record.get("messages"), list):
        return [(record["messages"], record.get("tools"))]
    return []
