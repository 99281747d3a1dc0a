"""Token mode: the LLM calls of a rollout to as few training samples as possible.

Calls are grouped into timelines (agent name + system prompt + tool list). Within a timeline
each call's parent is the call whose whole context (prompt ids + completion ids, exactly as
sampled) is the longest prefix of its prompt ids, found with a prefix tree in time linear in
the tokens. The parents form a forest; each call continues its parent's sample when it is the
parent's first child, else it starts a sample of its own (whose prompt holds the shared part as
context). That gives one sample per leaf: the fewest possible, and one per linear chain.

Every completion token is trained (loss mask 1) in exactly one sample; everything else (prompt
tokens, and the completions of calls trained in another sample) has loss mask 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tracewheel.messages import tools_key

from .config import ON_MISMATCH, MergeConfig
from .mismatch import ConversationIndex, classify, splice_offset
from .prefix_tree import PrefixTree, common_prefix
from .sequences import CallView, MergeStats, assemble, calls_info, sample_id

STOPPED = ("stop", "tool_calls")  # finish reasons of a completion that ended with its stop token
# Fields the samples get in place of these rollout fields; the rest are carried to each sample.
CONSUMED = ("id", "calls", "final")

TokenizerFor = Callable[[str | None], Any]  # a call's model name -> tokenizer, or None


def no_tokenizer(model: str | None) -> None:
    return None


def _system_prompt(messages: list) -> str | None:
    if messages and isinstance(messages[0], dict) and messages[0].get("role") in (
            "system", "developer"):
        content = messages[0].get("content")
        return content if isinstance(content, str) else repr(content)
    return None


def _weight_version(calls: list[CallView]) -> str | list[str] | None:
    """The version of the weights that sampled a sample's trained tokens: one, or each in
    call order where the weights changed between its calls; None where the server gave none."""
    versions = list(dict.fromkeys(c.weight_version for c in calls if c.weight_version))
    return versions[0] if len(versions) == 1 else (versions or None)


def timelines(calls: list[dict]) -> dict[tuple, list[CallView]]:
    """The calls of a rollout by timeline (agent name, system prompt, tool list), in call
    order. Another tool list renders another system turn: a call that drops the tools (an
    agent's last step) does not continue the calls that had them."""
    groups: dict[tuple, list[CallView]] = {}
    for i, call in enumerate(calls):
        messages = call.get("messages") or []
        view = CallView(i, call["prompt_ids"], call["completion_ids"], call["logprobs"],
                        messages, call.get("output"), call.get("finish_reason"),
                        call.get("model"), call.get("weight_version"))
        key = (call.get("agent"), _system_prompt(messages), tools_key(call.get("tools")))
        groups.setdefault(key, []).append(view)
    return groups


def link_timeline(calls: list[CallView], *, on_mismatch: str = MergeConfig.on_mismatch,
                  tokenizer_for: TokenizerFor = no_tokenizer) -> None:
    """Set each call's ``parent``, ``offset`` and ``mismatch`` (see the module docstring).

    A mismatch is a call whose messages repeat an earlier call's messages and output while its
    prompt ids do not continue that call's context. By default the call then continues only
    what it exactly extends (often nothing: a new sample); with ``on_mismatch="splice"`` it
    continues the earlier call's sampled tokens from where its new turns start.
    """
    tree = PrefixTree()
    conversations = ConversationIndex(calls)
    has_child: set[int] = set()
    end_token = None  # the timeline's end-of-turn token, as its stopped completions show it
    for position, call in enumerate(calls):
        found = tree.match(call.prompt)
        call.parent, call.offset = found.exact, found.exact_len
        # A call that cleanly continues the tip of a chain needs no look at its messages.
        if found.near is not None and (found.exact is None or found.near != found.exact
                                       or found.exact in has_child):
            previous = conversations.previous(position)
            if previous is not None and previous.index != found.exact:
                _check(call, previous, on_mismatch, tokenizer_for, end_token)
        if call.parent is not None:
            has_child.add(call.parent)
        tree.insert(call.context, call.index)
        if call.finish_reason in STOPPED and call.completion:
            end_token = call.completion[-1]


def _check(call: CallView, previous: CallView, on_mismatch: str, tokenizer_for: TokenizerFor,
           end_token: int | None) -> None:
    """``call``'s messages continue ``previous``: record a mismatch where its prompt ids do
    not, and splice it on if asked and an end-of-turn token shows where."""
    context = previous.context
    if call.prompt[:len(context)] == context:
        return  # it continues it (and a later call too: the later is its parent)
    tokenizer = tokenizer_for(previous.model or call.model)
    at = common_prefix(call.prompt, 0, context, 0, min(len(context), len(call.prompt)))
    call.mismatch = {"call": call.index, "with": previous.index,
                     "kind": classify(context, call.prompt, tokenizer), "at": at,
                     "spliced": False}
    if on_mismatch == "splice":
        if end_token is None:
            end_token = getattr(tokenizer, "eos_token_id", None)
        offset = splice_offset(context, call.prompt, end_token)
        if offset is not None:
            call.parent, call.offset = previous.index, offset
            call.mismatch["spliced"] = True


def chains(calls: list[CallView]) -> list[list[CallView]]:
    """Cover the forest with the fewest chains: a call continues its parent's chain when it
    is the parent's first child; the other children start chains of their own."""
    continued: set[int] = set()
    chain_of: dict[int, list[CallView]] = {}
    result = []
    for call in calls:
        if call.parent is not None and call.parent not in continued:
            continued.add(call.parent)
            chain = chain_of[call.parent]
        else:
            chain = []
            result.append(chain)
        chain.append(call)
        chain_of[call.index] = chain
    return result


def merge_rollout(rollout: dict, *, on_mismatch: str = MergeConfig.on_mismatch,
                  max_len: int | None = None, tokenizer_for: TokenizerFor = no_tokenizer,
                  stats: MergeStats | None = None) -> list[dict]:
    """The sample records of one rollout record (see the module docstring and the README)."""
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch must be one of {ON_MISMATCH}, not {on_mismatch!r}")
    stats = stats if stats is not None else MergeStats()
    carried = {k: v for k, v in rollout.items() if k not in CONSUMED}
    # A multi-agent workflow may reward each agent apart: its samples learn from their own.
    agent_rewards = rollout.get("agent_rewards") or {}
    samples: list[dict] = []
    if not rollout["calls"]:  # an agent that answered without its model: nothing to train on
        stats.dropped["rollouts without calls"] += 1
        return samples
    for (agent, _system, _tools_key), calls in timelines(rollout["calls"]).items():
        stats.calls += len(calls)
        usable = []
        for call in calls:
            if call.prompt:
                usable.append(call)
                stats.tokens_separate += len(call.prompt) + len(call.completion)
            else:
                stats.dropped["calls without token ids"] += 1
        link_timeline(usable, on_mismatch=on_mismatch, tokenizer_for=tokenizer_for)
        by_index = {c.index: c for c in usable}
        for call in usable:
            if call.mismatch:
                stats.mismatches[call.mismatch["kind"]] += 1
                stats.spliced += call.mismatch["spliced"]
        for chain in chains(usable):
            for built in assemble(chain, max_len, stats):
                samples.append({
                    **carried,
                    "id": sample_id(rollout["id"], built),
                    "rollout_id": rollout["id"],
                    "task_id": rollout.get("task_id"),
                    "group": rollout.get("group"),
                    "agent": agent,
                    "input_ids": built.input_ids,
                    "loss_mask": built.loss_mask,
                    "logprobs": built.logprobs,
                    "reward": agent_rewards.get(agent, rollout.get("reward")),
                    "weight_version": _weight_version(built.calls),
                    "calls": calls_info(built, by_index),
                })
                stats.samples += 1
                stats.tokens_merged += len(built.input_ids)
                stats.trained += sum(built.loss_mask)
    samples.sort(key=lambda s: s["calls"]["indices"][0])
    return samples
