"""Text mode: task records (no token ids) rendered with a chat template, assistant turns masked.

For SFT on good production traces (trace-export | trace-filter). A task's conversation is its
trajectory's LLM calls, chained where a call's messages repeat the previous call's messages and
output (one ReAct turn is one chain); the assistant turns trained are the outputs of those
calls, and the messages before the first call (earlier turns, judged in their own task records)
are context. A task without LLM calls in its trajectory is its messages plus its ``answer``.

What an assistant turn trains: the text from the end of the role header to the end of the
end-of-turn token (the tokenizer's eos text, ``<|im_end|>`` in ChatML) inclusive, tokenized on
its own; not the header ``<|im_start|>assistant\\n``, not the newline the template writes
after the turn. Turns are found by rendering the conversation up to each turn with the
generation prompt and up to its end: their difference is the turn. A template that renders
earlier turns differently once later ones follow (some drop earlier reasoning) cannot be masked
this way: such a conversation is counted as dropped, never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracewheel.chat_template import render
from tracewheel.messages import messages_extend
from tracewheel.records import task_messages

from .sequences import CallView, MergeStats, assemble, calls_info, sample_id

CONSUMED = ("id", "query", "messages", "answer", "reference", "feedback", "trajectory")


@dataclass
class Conversation:
    messages: list[dict]
    tools: list | None
    turns: list[int] = field(default_factory=list)    # positions of the trained turns
    indices: list[int] = field(default_factory=list)  # their LLM calls in the trajectory


def _assistant(output: dict) -> dict:
    return {**output, "role": "assistant"}


def conversations(task: dict) -> list[Conversation]:
    """The conversations of a task to train on, each with the positions of its trained turns."""
    chains: list[tuple[dict, Conversation]] = []  # (last call, conversation so far)
    for i, step in enumerate(task.get("trajectory") or []):
        if not isinstance(step, dict) or step.get("type", "llm") != "llm":
            continue
        messages, output = step.get("messages"), step.get("output")
        if not isinstance(messages, list) or not isinstance(output, dict):
            continue  # a failed call: nothing was generated
        for k in range(len(chains) - 1, -1, -1):
            last, conv = chains[k]
            if messages_extend(messages, last["messages"], last["output"]):
                break
        else:
            k, conv = -1, Conversation([], step.get("tools"))
            chains.append((step, conv))
        conv.messages = [*messages, _assistant(output)]
        conv.tools = step.get("tools") or conv.tools
        conv.turns.append(len(messages))
        conv.indices.append(i)
        chains[k] = (step, conv)
    if chains:
        return [conv for _, conv in chains]
    if isinstance(task.get("answer"), str):
        messages = task_messages(task)
        return [Conversation([*messages, {"role": "assistant", "content": task["answer"]}],
                             None, [len(messages)], [])]
    return []


class TemplateRewritesHistory(Exception):
    """The rendering of a turn changes once later turns follow it."""


def trained_spans(tokenizer: Any, conv: Conversation, template: str | None
                  ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span each trained turn trains."""
    full = render(tokenizer, conv.messages, conv.tools, template, False)
    eos = tokenizer.eos_token or ""
    spans = []
    for turn in conv.turns:
        head = render(tokenizer, conv.messages[:turn], conv.tools, template, True)
        upto = render(tokenizer, conv.messages[:turn + 1], conv.tools, template, False)
        if not (upto.startswith(head) and full.startswith(upto)):
            raise TemplateRewritesHistory
        end = upto.rfind(eos, len(head)) if eos else -1
        spans.append((len(head), end + len(eos) if end >= 0 else len(upto)))
    return full, spans


def tokenize_turns(tokenizer: Any, conv: Conversation, template: str | None) -> list[CallView]:
    """The conversation as a chain of pseudo-calls: turn k's prompt is every token before its
    trained span, its completion the span's tokens.

    The text is tokenized piece by piece, cut at the span boundaries, as at inference: the
    prompt text on its own (what vLLM tokenizes), then the turn's text on its own (what the
    model generates). Tokenized at once, the header's newline and the turn's first characters
    could merge into one token that belongs to neither.
    """
    full, spans = trained_spans(tokenizer, conv, template)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    calls: list[CallView] = []
    ids: list[int] = []
    done = 0
    for index, (lo, hi) in zip(conv.indices or conv.turns, spans, strict=True):
        start = len(ids)
        ids += encode(full[done:lo])
        prompt = list(ids)
        ids += encode(full[lo:hi])
        calls.append(CallView(index, prompt, ids[len(prompt):], None,
                              parent=calls[-1].index if calls else None, offset=start))
        done = hi
    return calls


def merge_task(task: dict, *, tokenizer: Any, chat_template: str | None,
               max_len: int | None = None, stats: MergeStats | None = None) -> list[dict]:
    """The sample records of one task record (see the module docstring and the README)."""
    stats = stats if stats is not None else MergeStats()
    carried = {k: v for k, v in task.items() if k not in CONSUMED}
    agent = (task.get("source") or {}).get("agent")
    samples = []
    convs = conversations(task)
    if not convs:
        stats.dropped["no assistant turn"] += 1
    for conv in convs:
        stats.calls += len(conv.turns)
        try:
            chain = tokenize_turns(tokenizer, conv, chat_template)
        except TemplateRewritesHistory:
            stats.dropped["template rewrites earlier turns"] += 1
            continue
        turn_of = dict(zip([c.index for c in chain], conv.turns, strict=True))
        by_index = {c.index: c for c in chain}
        stats.tokens_separate += sum(len(c.prompt) + len(c.completion) for c in chain)
        for built in assemble(chain, max_len, stats):
            samples.append({
                **carried,
                "id": sample_id(task["id"], built),
                "rollout_id": None,
                "task_id": task["id"],
                "group": None,
                "agent": agent,
                "input_ids": built.input_ids,
                "loss_mask": built.loss_mask,
                "logprobs": None,
                "reward": None,
                "calls": calls_info(built, by_index,
                                    turns=[turn_of[c.index] for c in built.calls]),
            })
            stats.samples += 1
            stats.tokens_merged += len(built.input_ids)
            stats.trained += sum(built.loss_mask)
    return samples
