"""vLLM completions replies (token-id prompts) turned into the chat completions the agent
asked for: messages with tool calls parsed, chat-style logprobs, and stream chunks event by
event (text that may begin a tool call is held back until it is known not to)."""

from __future__ import annotations

import time
from typing import Any

from .continuation import TOOL_CALL_START, held_back, parse_tool_calls, parses_tools

# What return_token_ids fills in; vLLM sends these keys as null when not asked.
ADDED = ("prompt_token_ids", "prompt_text")


def chat_logprobs(logprobs: dict | None) -> dict | None:
    """Completions logprobs (``tokens``, ``token_logprobs``, ``top_logprobs``) as chat's."""
    if not logprobs:
        return None
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    content = []
    for token, value, top in zip(tokens, values, tops, strict=False):
        content.append({"token": token, "logprob": value, "bytes": list(token.encode()),
                        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                         for t, lp in (top or {}).items()]})
    return {"content": content}


def completions_logprobs(logprobs: dict | None) -> list[float]:
    return [float(v) for v in ((logprobs or {}).get("token_logprobs") or [])]


def assistant_message(text: str, tools: bool) -> tuple[dict, bool]:
    """The assistant message of sampled text, and whether it called tools."""
    content, calls = parse_tool_calls(text) if tools else (text, [])
    return {"role": "assistant", "content": content, "tool_calls": calls,
            "reasoning_content": None}, bool(calls)


def finish(reason: str | None, called: bool) -> str:
    # As vLLM's chat API: a reply that called tools finishes with "tool_calls".
    return "tool_calls" if called and reason in ("stop", None) else (reason or "stop")


def envelope(reply_id: str, model: str | None, created: int | None, obj: str) -> dict:
    return {"id": reply_id, "object": obj, "created": created or int(time.time()),
            "model": model}


class ChoiceStream:
    """One choice of a streamed completion, sent on as chat chunks and kept for the record."""

    def __init__(self, index: int, tools: bool) -> None:
        self.index = index
        self.tools = tools
        self.text = ""
        self.sent = 0
        self.started = False
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None
        self.message: dict[str, Any] = {}

    def _choice(self, delta: dict, **extra: Any) -> dict:
        return {"index": self.index, "delta": delta, "logprobs": None, "finish_reason": None,
                **extra}

    def add(self, choice: dict, asked_logprobs: bool, asked_ids: bool) -> list[dict]:
        """The chat choices (one per chunk) this completions choice chunk gives."""
        out = []
        if not self.started:
            self.started = True
            out.append(self._choice({"role": "assistant", "content": ""}))
        self.text += choice.get("text") or ""
        ids = choice.get("token_ids") or []
        self.token_ids.extend(ids)
        self.logprobs.extend(completions_logprobs(choice.get("logprobs")))
        extra = {}
        if asked_ids:
            extra["token_ids"] = ids
        if asked_logprobs:
            extra["logprobs"] = chat_logprobs(choice.get("logprobs"))
        upto = len(self.text)
        if self.tools:
            cut = self.text.find(TOOL_CALL_START, self.sent)
            upto = cut if cut >= 0 else len(self.text) - held_back(self.text)
        if upto > self.sent or extra.get("token_ids") or (extra.get("logprobs") or {}).get(
                "content"):
            out.append(self._choice({"content": self.text[self.sent:upto]}, **extra))
            self.sent = max(self.sent, upto)
        if choice.get("finish_reason") is not None:
            out.extend(self._end(choice.get("finish_reason"), choice.get("stop_reason")))
        return out

    def _end(self, reason: str, stop_reason: Any) -> list[dict]:
        self.message, called = assistant_message(self.text, self.tools)
        out = []
        if called:
            out.append(self._choice({"tool_calls": [
                {"index": i, **call} for i, call in enumerate(self.message["tool_calls"])]}))
        elif self.sent < len(self.text):  # held back, and not a tool call after all
            out.append(self._choice({"content": self.text[self.sent:]}))
            self.sent = len(self.text)
        self.finish_reason = finish(reason, called)
        out.append(self._choice({}, finish_reason=self.finish_reason, stop_reason=stop_reason))
        return out


class StreamedChoice:
    """One choice of a streamed completion, put back together from its chunks."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.tool_calls: dict[int, dict] = {}
        self.finish_reason: str | None = None
        self.role = "assistant"

    def add(self, choice: dict) -> None:
        delta = choice.get("delta") or {}
        self.role = delta.get("role") or self.role
        if delta.get("content"):
            self.text.append(delta["content"])
        for call in delta.get("tool_calls") or []:
            slot = self.tool_calls.setdefault(call.get("index", 0), {
                "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            slot["id"] = call.get("id") or slot["id"]
            fn = call.get("function") or {}
            slot["function"]["name"] += fn.get("name") or ""
            slot["function"]["arguments"] += fn.get("arguments") or ""
        self.token_ids.extend(choice.get("token_ids") or [])
        self.logprobs.extend(t["logprob"] for t in
                             ((choice.get("logprobs") or {}).get("content") or []))
        self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def message(self) -> dict:
        out: dict[str, Any] = {"role": self.role, "content": "".join(self.text) or None}
        if self.tool_calls:
            out["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return out


def plain_message(message: dict) -> dict:
    """The assistant message as the agent saw it, without the response's empty extras."""
    keep = {"role", "content", "tool_calls", "reasoning_content", "reasoning", "name"}
    return {k: v for k, v in message.items() if k in keep and v not in (None, [], "")} | {
        "content": message.get("content")}


def chat_chunks(chunk: dict, streams: dict[int, ChoiceStream], body: dict,
                prompt_ids: list[int]) -> list[dict]:
    """A completions stream chunk as chat chunks, one choice each."""
    asked_logprobs = bool(body.get("logprobs"))
    asked_ids = bool(body.get("return_token_ids"))
    head = envelope(str(chunk.get("id", "")).replace("cmpl-", "chatcmpl-", 1),
                    chunk.get("model"), chunk.get("created"), "chat.completion.chunk")
    out = []
    for choice in chunk.get("choices") or []:
        index = choice.get("index", 0)
        first = index not in streams
        stream = streams.setdefault(index, ChoiceStream(index, parses_tools(body)))
        for piece in stream.add(choice, asked_logprobs, asked_ids):
            out.append({**head, "choices": [piece]})
            if first and asked_ids:  # vLLM's chat stream sends the prompt ids first
                out[-1]["prompt_token_ids"] = prompt_ids
            first = False
    if chunk.get("usage") is not None and not chunk.get("choices"):
        out.append({**head, "choices": [], "usage": chunk["usage"]})
    return out


def relay_chat_chunk(chunk: dict, choices: dict[int, StreamedChoice], body: dict
                     ) -> list[dict]:
    """A chat stream chunk as the agent gets it: each choice's pieces kept (in ``choices``),
    and what the agent did not ask for taken out."""
    asked_ids = bool(body.get("return_token_ids"))
    for choice in chunk.get("choices") or []:
        choices.setdefault(choice.get("index", 0), StreamedChoice()).add(choice)
        strip_choice(choice, bool(body.get("logprobs")), asked_ids)
    strip_reply(chunk, asked_ids)
    return [chunk]


def strip_choice(choice: dict, asked_logprobs: bool, asked_ids: bool) -> None:
    """Give the agent what vLLM gives when not asked for ids or logprobs: nulls."""
    if not asked_ids and "token_ids" in choice:
        choice["token_ids"] = None
    if not asked_logprobs:
        choice["logprobs"] = None


def strip_reply(reply: dict, asked_ids: bool) -> None:
    if not asked_ids:
        for key in ADDED:
            if key in reply:
                reply[key] = None


def chat_id(reply_id: Any, continued: bool) -> str | None:
    """The id of the chat completion the client gets: a continued call's completions id as
    the chat id it is sent back under."""
    if not reply_id:
        return None
    return str(reply_id).replace("cmpl-", "chatcmpl-", 1) if continued else str(reply_id)
