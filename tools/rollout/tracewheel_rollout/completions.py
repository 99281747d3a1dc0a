"""vLLM completions replies (token-id prompts) turned into the chat completions the agent
asked for: messages with tool calls parsed, chat-style logprobs, and stream chunks event by
event (text that may begin a tool call is held back until it is known not to)."""

from __future__ import annotations

import time
from typing import Any

from .continuation import TOOL_CALL_START, held_back, parse_tool_calls


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
