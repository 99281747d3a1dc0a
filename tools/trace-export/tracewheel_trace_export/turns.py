"""One run's spans to task records: one per agent invocation (turn), with the LLM and tool calls
made under it, the conversation the agent saw, its answer, and what came after it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tracewheel.ids import stable_id
from tracewheel.messages import content_text

from .reprparse import ReprError
from .spans import (
    AGENT,
    CHAT,
    TOOL,
    Span,
    agent_input,
    agent_name,
    agent_output,
    chat_output,
    chat_prompt,
    chat_tools,
    chat_usage,
    tool_call,
    tool_result_text,
)


@dataclass
class Run:
    id: str
    project: str | None
    name: str | None
    status: str | None = None
    started: str | None = None


def _owner(span: Span, by_id: dict[str, Span]) -> Span | None:
    """The nearest agent span above ``span`` (its turn)."""
    seen = set()
    parent = by_id.get(span.parent) if span.parent else None
    while parent is not None and parent.id not in seen:
        if parent.op == AGENT:
            return parent
        seen.add(parent.id)
        parent = by_id.get(parent.parent) if parent.parent else None
    return None


def _llm_call(span: Span) -> dict:
    return {
        "type": "llm", "span_id": span.id, "model": span.model,
        "messages": chat_prompt(span), "tools": chat_tools(span), "output": chat_output(span),
        "usage": chat_usage(span), "status": "ok" if span.ok else "error", "error": span.error,
        "time": span.started, "latency_ms": span.latency_ms,
    }


# AgentScope 1.0.7 turns every plain-text final answer into a call of this built-in tool.
FRAMEWORK_TOOLS = {"generate_response"}


def _tool_call(span: Span, seen_results: dict[str, str]) -> dict:
    """A tool call; its result as the model later saw it in a prompt (plain JSON, cheap), else
    parsed from the stored repr text."""
    call = tool_call(span)
    raw = call.pop("result_raw")
    result = seen_results.get(call["call_id"]) if call["call_id"] else None
    call["result"] = result if result is not None else tool_result_text(raw)
    return {"type": "tool", "span_id": span.id, **call,
            "framework": call["name"] in FRAMEWORK_TOOLS,
            "status": "ok" if span.ok else "error", "error": span.error,
            "time": span.started, "latency_ms": span.latency_ms}


@dataclass
class Turn:
    span: Span
    agent: str
    inputs: list[dict]
    calls: list[Span]
    unreadable: str | None = None  # why its input could not be read: the turn is not a task


def turns_of_run(spans: list[Span]) -> list[Turn]:
    """The agent invocations of a run in time order, each with the calls made directly under it."""
    by_id = {s.id: s for s in spans}
    turns = {s.id: _turn(s) for s in sorted(spans, key=lambda s: s.start_ns) if s.op == AGENT}
    for span in spans:
        if span.op in (CHAT, TOOL):
            owner = _owner(span, by_id)
            if owner is not None:
                turns[owner.id].calls.append(span)
    for turn in turns.values():
        turn.calls.sort(key=lambda s: s.start_ns)
    return list(turns.values())


def _turn(span: Span) -> Turn:
    try:
        return Turn(span, agent_name(span), agent_input(span), [])
    except ReprError as err:
        return Turn(span, agent_name(span), [], [], unreadable=str(err))


def _query(inputs: list[dict]) -> str:
    """The request that opened the turn: the last message the agent was given (a user's, or
    another agent's in multi-agent runs; the first may carry the original question too)."""
    return content_text(inputs[-1].get("content")) if inputs else ""


def tasks_of_run(run: Run, spans: list[Span], *, unit: str, source_extra: dict[str, Any],
                 on_unreadable: Callable[[Turn], None] = lambda turn: None) -> Iterator[dict]:
    """Task records for one run: per turn (default), per LLM call, or one for the whole run.
    A turn whose input cannot be read is no task: ``on_unreadable`` is told of it."""
    turns = turns_of_run(spans)
    # Each turn's feedback is the input of the same agent's next turn: walk back in time.
    following: list[Turn | None] = []
    next_by_agent: dict[str, Turn] = {}
    for turn in reversed(turns):
        following.append(next_by_agent.get(turn.agent))
        next_by_agent[turn.agent] = turn
    following.reverse()
    records = []
    for turn, nxt in zip(turns, following, strict=True):
        if turn.unreadable is not None:
            on_unreadable(turn)
        else:
            records.append(_turn_record(run, turn, nxt, source_extra))
    if unit == "turn":
        yield from records
    elif unit == "call":
        for record in records:
            yield from _call_records(record)
    else:
        yield _run_record(run, records, source_extra)


def _turn_record(run: Run, turn: Turn, following: Turn | None, extra: dict) -> dict:
    span = turn.span
    answer = agent_output(span) if span.ok else None
    llm_calls = {s.id: _llm_call(s) for s in turn.calls if s.op == CHAT}
    seen_results = {m["tool_call_id"]: m["content"]
                    for call in llm_calls.values() for m in call["messages"]
                    if m.get("role") == "tool" and m.get("tool_call_id")
                    and isinstance(m.get("content"), str)}
    trajectory = [llm_calls[s.id] if s.op == CHAT else _tool_call(s, seen_results)
                  for s in turn.calls]
    return {
        "id": stable_id("studio", run.id, span.trace, span.id, prefix="studio-"),
        "query": _query(turn.inputs),
        # What the agent saw: the prompt of its first LLM call, else just its input.
        "messages": next((c["messages"] for c in llm_calls.values() if c["messages"]),
                         list(turn.inputs)),
        "answer": answer,
        "reference": None,
        "feedback": list(following.inputs) if following else [],
        "trajectory": trajectory,
        "status": "ok" if span.ok else "error",
        "error": span.error,
        "source": {
            "kind": "studio", **extra, "project": run.project, "run_id": run.id,
            "run_name": run.name, "trace_id": span.trace, "span_id": span.id,
            "agent": turn.agent, "time": span.started,
            # AgentScope 2.x names the reply; 1.x spans do not carry it.
            "reply_id": (span.attrs.get("agentscope") or {}).get("agent", {}).get("reply_id"),
            "llm_calls": sum(1 for s in turn.calls if s.op == CHAT),
            "tool_calls": sum(1 for c in trajectory if c["type"] == "tool" and not c["framework"]),
        },
    }


def _call_records(turn_record: dict) -> Iterator[dict]:
    """One record per LLM call: its prompt as messages, its output as the answer (for SFT)."""
    for call in turn_record["trajectory"]:
        if call["type"] != "llm":
            continue
        output = call["output"]
        yield {
            **turn_record,
            "id": stable_id(turn_record["id"], call["span_id"], prefix="studio-"),
            "messages": call["messages"],
            "answer": content_text(output.get("content")) if output else None,
            "trajectory": [call],
            "status": call["status"], "error": call["error"],
            "source": {**turn_record["source"], "span_id": call["span_id"],
                       "turn_id": turn_record["id"]},
        }


def _run_record(run: Run, records: list[dict], extra: dict) -> dict:
    first = records[0] if records else None
    return {
        "id": stable_id("studio-run", run.id, prefix="studio-"),
        "query": first["query"] if first else "",
        "messages": first["messages"] if first else [],
        "answer": records[-1]["answer"] if records else None,
        "reference": None,
        "feedback": [],
        "trajectory": [call for r in records for call in r["trajectory"]],
        "turns": [{k: r[k] for k in ("id", "query", "answer", "status", "error")} |
                  {"agent": r["source"]["agent"]} for r in records],
        "status": "error" if any(r["status"] == "error" for r in records) else "ok",
        "error": next((r["error"] for r in records if r["error"]), None),
        "source": {"kind": "studio", **extra, "project": run.project, "run_id": run.id,
                   "run_name": run.name, "time": first["source"]["time"] if first else None},
    }
