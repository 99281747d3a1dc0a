"""Studio span rows, of either schema and any AgentScope version, as one normalized shape.

Three layouts occur (the fixtures' README):
- Studio 1.0.5 + AgentScope 1.0.7/1.0.8: ``spanKind`` AGENT/LLM/TOOL/FORMATTER, attributes
  ``input``/``output``/``metadata``.
- Studio 1.0.9 + AgentScope 1.0.9+: OpenTelemetry rows, ``gen_ai.*`` attributes, and the traced
  function's ``input``/``output`` under ``agentscope.function`` (older spans converted on ingest
  have only the latter).
- Studio 1.0.9 + AgentScope 2.x middleware: ``gen_ai.*`` only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from tracewheel.jsonl import loads
from tracewheel.messages import content_text

from .reprparse import ReprError, parse_msg, parse_repr

AGENT, CHAT, TOOL, FORMAT, OTHER = "agent", "chat", "tool", "format", "other"
_LEGACY_KINDS = {"AGENT": AGENT, "LLM": CHAT, "TOOL": TOOL, "FORMATTER": FORMAT}
_OTEL_OPS = {"invoke_agent": AGENT, "chat": CHAT, "execute_tool": TOOL, "format": FORMAT,
             "AGENT": AGENT, "LLM": CHAT, "TOOL": TOOL, "FORMATTER": FORMAT}


@dataclass
class Span:
    id: str
    parent: str | None
    trace: str
    run: str
    op: str
    name: str
    start_ns: int
    end_ns: int
    ok: bool
    error: str | None
    attrs: dict[str, Any]
    model: str | None = None
    service: str | None = None

    @property
    def fn(self) -> dict[str, Any]:
        """The traced function's ``input``/``output``/``metadata`` (both layouts)."""
        return self.attrs.get("agentscope", {}).get("function") or self.attrs

    @property
    def gen_ai(self) -> dict[str, Any]:
        return self.attrs.get("gen_ai") or {}

    @cached_property
    def started(self) -> str:
        return iso_utc(self.start_ns)

    @property
    def latency_ms(self) -> float:
        return round((self.end_ns - self.start_ns) / 1e6, 3)


def iso_utc(ns: int) -> str:
    """Nanoseconds since the epoch as ``2026-11-22T03:50:00.123Z`` (millisecond precision)."""
    seconds, ms = divmod(ns // 1_000_000, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


class CorruptAttributes(ValueError):
    """A span whose attributes column is not a JSON object."""


def _json(text: str | None, what: str) -> Any:
    if not text:
        return {}
    try:
        value = loads(text)
    except json.JSONDecodeError as err:
        problem = err.msg.split(":")[0]
        raise CorruptAttributes(f"{what} is not valid JSON ({problem} at column {err.colno})") \
            from None
    if not isinstance(value, dict):
        kind = "null" if value is None else f"a JSON {type(value).__name__}"
        raise CorruptAttributes(f"{what} is {kind}, not an object")
    return value


# Where the export reads a span's attributes, what must be there (when present): an object, a
# list, or a list of objects. The same keys are read at the top (Studio 1.0.5) and under
# agentscope.function (1.0.9); a span that has another shape there is corrupt, not a crash.
_FUNCTION_SHAPES: dict[tuple[str, ...], str] = {
    ("input",): "object", ("input", "kwargs"): "object", ("input", "args"): "list",
    ("input", "tool_call"): "object", ("metadata",): "object",
    ("input", "kwargs", "tools"): "list of objects"}
_SHAPES: dict[tuple[str, ...], str] = {
    **_FUNCTION_SHAPES,
    **{("agentscope", "function", *path): kind for path, kind in _FUNCTION_SHAPES.items()},
    ("agentscope",): "object", ("agentscope", "function"): "object",
    ("agentscope", "agent"): "object", ("gen_ai",): "object",
    **{("gen_ai", key): "object" for key in ("input", "output", "tool", "agent", "usage",
                                             "operation", "conversation")},
    ("gen_ai", "input", "messages"): "list of objects",
    ("gen_ai", "output", "messages"): "list of objects",
    ("gen_ai", "tool", "call"): "object", ("gen_ai", "tool", "definitions"): "list of objects"}
_IS = {"object": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list),
       "list of objects": lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v)}


def _check_shape(attrs: dict) -> None:
    """CorruptAttributes naming the first key whose value has a shape no Studio writes (a list
    where an object belongs), before any reader meets it; and a message's ``parts`` must be
    a list of objects too."""
    for path, kind in _SHAPES.items():
        value: Any = attrs
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and not _IS[kind](value):
            got = "an object" if isinstance(value, dict) else f"a JSON {type(value).__name__}"
            want = "an object" if kind == "object" else f"a {kind}"
            raise CorruptAttributes(f"attributes.{'.'.join(path)} is {got}, not {want}")
        if path[-1] == "messages" and value:
            for message in value:
                parts = message.get("parts")
                if parts is not None and not _IS["list of objects"](parts):
                    raise CorruptAttributes(f"attributes.{'.'.join(path)}[].parts is not a "
                                            f"list of objects")


def _iso_ns(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1e9)


def legacy_span(row: dict) -> Span:
    """A Studio 1.0.5 span row."""
    op = _LEGACY_KINDS.get(row.get("spanKind") or "", OTHER)
    # Formatter spans repeat the whole prompt and tell nothing new: never parse them.
    attrs = {} if op == FORMAT else _json(row["attributes"], "attributes")
    _check_shape(attrs)
    ok = (row.get("status") or "OK").upper() != "ERROR"
    return Span(
        id=row["id"], parent=row.get("parentSpanId") or None, trace=row.get("traceId") or "",
        run=row.get("run_id") or "", op=op,
        name=row.get("name") or "", start_ns=_iso_ns(row["startTime"]),
        end_ns=_iso_ns(row["endTime"]) if row.get("endTime") else _iso_ns(row["startTime"]),
        ok=ok, error=None if ok else (row.get("statusMessage") or "error"), attrs=attrs,
        model=(attrs.get("metadata") or {}).get("model_name") if isinstance(
            attrs.get("metadata"), dict) else None,
    )


def otel_span(row: dict) -> Span:
    """A Studio 1.0.9 (OpenTelemetry) span row."""
    op = _OTEL_OPS.get(row.get("operationName") or "")
    attrs = {} if op == FORMAT else _json(row["attributes"], "attributes")
    _check_shape(attrs)
    if op is None:
        op = _OTEL_OPS.get((attrs.get("gen_ai") or {}).get("operation", {}).get("name"), OTHER)
    code = row.get("statusCode")
    status = _json(row.get("status"), "status") if code in (None, 2) else {}
    if code is None:
        code = status.get("code", 0)
    ok = int(code) != 2
    return Span(
        id=row.get("spanId") or row["id"], parent=row.get("parentSpanId") or None,
        trace=row.get("traceId") or "", run=row.get("conversationId") or "",
        op=op, name=row.get("name") or "",
        start_ns=int(row["startTimeUnixNano"]),
        end_ns=int(row.get("endTimeUnixNano") or row["startTimeUnixNano"]),
        ok=ok, error=None if ok else (status.get("message") or "error"), attrs=attrs,
        model=row.get("model"), service=row.get("serviceName"),
    )


# --- content helpers ------------------------------------------------------------------------

def parts_to_openai(message: dict) -> dict:
    """A gen_ai message (``role``, ``parts``) as an OpenAI chat message."""
    role = message.get("role") or "user"
    texts, calls, results = [], [], []
    for part in message.get("parts") or []:
        kind = part.get("type")
        if kind == "text":
            texts.append(part.get("content") or "")
        elif kind == "tool_call":
            args = part.get("arguments")
            calls.append({"id": part.get("id"), "type": "function", "function": {
                "name": part.get("name"),
                "arguments": args if isinstance(args, str)
                else json.dumps(args, ensure_ascii=False),
            }})
        elif kind in ("tool_call_response", "tool_result"):
            results.append({"role": "tool", "tool_call_id": part.get("id"),
                            "content": content_text(part.get("response", part.get("result")))})
    if results:
        return results[0] if len(results) == 1 else {"role": "tool", "parts": results}
    out: dict[str, Any] = {"role": role, "content": "\n".join(texts) if texts else None}
    if message.get("name"):
        out["name"] = message["name"]
    if calls:
        out["tool_calls"] = calls
    return out


def msg_to_openai(msg: dict) -> dict:
    """An AgentScope Msg (parsed) as an OpenAI chat message (text content)."""
    role = msg.get("role") or "user"
    out = {"role": role if role in ("system", "user", "assistant") else "user",
           "content": content_text(msg.get("content"))}
    if msg.get("name"):
        out["name"] = msg["name"]
    return out


def agent_name(span: Span) -> str:
    meta = span.attrs.get("metadata")
    if isinstance(meta, dict) and meta.get("name"):
        return meta["name"]
    name = span.gen_ai.get("agent", {}).get("name")
    if name:
        return name
    return span.name.removeprefix("invoke_agent ").split(".")[0]


def agent_input(span: Span) -> list[dict]:
    """The messages an agent invocation was given, as OpenAI chat messages: from the structured
    gen_ai attributes where they exist (cheap), else from the Msg repr text. ReprError when
    that text is not a Msg we can read (never evaluated: a hostile repr stays unread)."""
    messages = span.gen_ai.get("input", {}).get("messages")
    if messages:
        return [parts_to_openai(m) for m in messages]
    kwargs = (span.fn.get("input") or {}).get("kwargs") or {}
    raw = kwargs.get("msg")
    if raw is None and (span.fn.get("input") or {}).get("args"):
        raw = span.fn["input"]["args"][0]
    if raw is not None:
        items = raw if isinstance(raw, list) else [raw]
        return [msg_to_openai(parse_msg(item)) for item in items if item is not None]
    return []


def agent_output(span: Span) -> str | None:
    """The text of an agent invocation's reply, or None when it has none (failed turn)."""
    messages = span.gen_ai.get("output", {}).get("messages")
    if messages:
        return "\n".join(content_text([{"type": "text", "text": p.get("content")}
                                      for p in m.get("parts") or [] if p.get("type") == "text"])
                         for m in messages)
    raw = span.fn.get("output")
    if isinstance(raw, str):
        try:
            msg = parse_msg(raw)
            return content_text(msg.get("content")) if msg else None
        except ReprError:
            return raw
    return None


def chat_prompt(span: Span) -> list[dict]:
    """The provider-formatted prompt of an LLM call (OpenAI chat format)."""
    args = (span.fn.get("input") or {}).get("args") or []
    if args and isinstance(args[0], list):
        return [_flatten_openai(m) for m in args[0]]
    messages = [parts_to_openai(m) for m in span.gen_ai.get("input", {}).get("messages") or []]
    # AgentScope 2.x records the reply in progress as a trailing empty assistant message.
    while messages and messages[-1]["role"] == "assistant" and not messages[-1].get("content") \
            and not messages[-1].get("tool_calls"):
        messages.pop()
    return messages


def _flatten_openai(message: dict) -> dict:
    """OpenAI message with list-of-text-parts content made plain text (what training reads)."""
    content = message.get("content")
    if not isinstance(content, list):
        return message  # parsed from this span's JSON alone: nothing else shares it
    if all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return {**message, "content": "".join(p.get("text") or "" for p in content)}
    return message


def chat_tools(span: Span) -> list[dict] | None:
    kwargs = (span.fn.get("input") or {}).get("kwargs") or {}
    if kwargs.get("tools"):
        return kwargs["tools"]
    defs = span.gen_ai.get("tool", {}).get("definitions")
    if defs:
        return [{"type": "function", "function": {k: v for k, v in d.items() if k != "type"}}
                for d in defs]
    return None


def chat_output(span: Span) -> dict | None:
    """The assistant message an LLM call produced (OpenAI format), None if it failed."""
    if not span.ok:
        return None
    raw = span.fn.get("output")
    if isinstance(raw, dict) and "content" in raw:
        texts, calls = [], []
        for block in raw.get("content") or []:
            if block.get("type") == "text":
                texts.append(block.get("text") or "")
            elif block.get("type") == "tool_use":
                calls.append({"id": block.get("id"), "type": "function", "function": {
                    "name": block.get("name"),
                    "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}})
        out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            out["tool_calls"] = calls
        return out
    messages = span.gen_ai.get("output", {}).get("messages") or []
    return parts_to_openai(messages[-1]) if messages else None


def chat_usage(span: Span) -> dict | None:
    raw = span.fn.get("output")
    if isinstance(raw, dict) and isinstance(raw.get("usage"), dict):
        usage = raw["usage"]
        return {key: usage.get(key) for key in ("input_tokens", "output_tokens")}
    usage = span.gen_ai.get("usage")
    return dict(usage) if usage else None


def tool_call(span: Span) -> dict:
    """A tool execution: name, call id, arguments, and its result as stored (``result_raw``:
    repr text or a dict; ``tool_result_text`` reads it)."""
    call = (span.fn.get("input") or {}).get("tool_call") or {}
    gcall = span.gen_ai.get("tool", {}).get("call", {})
    name = call.get("name") or span.gen_ai.get("tool", {}).get("name") or \
        span.name.removeprefix("execute_tool ")
    arguments = call.get("input") if "input" in call else gcall.get("arguments")
    result_raw = span.fn.get("output") if "output" in span.fn else gcall.get("result")
    return {"name": name, "call_id": call.get("id") or gcall.get("id"), "arguments": arguments,
            "result_raw": result_raw}


def tool_result_text(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            data = parse_repr(raw)
        except ReprError:
            return raw  # AgentScope 2.x pydantic reprs are not Python syntax: keep the text
        if isinstance(data, dict):
            return content_text(data.get("content"))
        return str(data)
    if isinstance(raw, dict):
        return content_text(raw.get("content"))
    return str(raw)
