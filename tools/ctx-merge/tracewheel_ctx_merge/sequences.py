"""Chains of calls to token sequences with loss masks: the part token and text mode share.

A chain is a list of calls where each continues the one before it (see ``merge.py``). Its
sequence is the first call's prompt and completion, then for each later call the new part of
its prompt (from its ``offset`` on) and its completion. Prompt tokens get loss mask 0 and
logprob 0.0; completion tokens mask 1 and their sampling logprob.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CallView:
    """One LLM call as the merge sees it."""

    index: int
    prompt: list[int]
    completion: list[int]
    logprobs: list[float] | None
    messages: list = field(default_factory=list)
    output: dict | None = None
    finish_reason: str | None = None
    model: str | None = None
    weight_version: str | None = None  # the version of the weights that sampled it
    parent: int | None = None      # the call this one continues, if any
    offset: int = 0                # where this call's new prompt tokens start, after the parent
    mismatch: dict | None = None   # why it did not simply continue an earlier call

    @property
    def context(self) -> list[int]:
        return self.prompt + self.completion


@dataclass
class MergeStats:
    """What the merge did, for the summary line."""

    calls: int = 0
    samples: int = 0
    tokens_separate: int = 0   # tokens if every call were its own sample (prompt + completion)
    tokens_merged: int = 0     # tokens of the samples written
    trained: int = 0           # loss_mask == 1 tokens written
    mismatches: Counter = field(default_factory=Counter)
    spliced: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)  # failed records skipped, by status
    failed_kept: int = 0


@dataclass
class Built:
    """One sample's tokens and the calls it trains."""

    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = field(default_factory=list)
    calls: list[CallView] = field(default_factory=list)
    truncated: int = 0  # completion tokens cut off by --max-len


def _append(built: Built, call: CallView, new_prompt: list[int]) -> None:
    built.input_ids += new_prompt
    built.input_ids += call.completion
    built.loss_mask += [0] * len(new_prompt)
    built.loss_mask += [1] * len(call.completion)
    if built.logprobs is not None:
        if call.logprobs is None:
            built.logprobs = None
        else:
            built.logprobs += [0.0] * len(new_prompt)
            built.logprobs += call.logprobs
    built.calls.append(call)


def assemble(chain: list[CallView], max_len: int | None, stats: MergeStats) -> Iterator[Built]:
    """The samples of one chain: one, or more where ``max_len`` splits it at call boundaries.

    A sample that starts at a call (the chain's first, or after a split) takes that call's
    whole prompt, so every sample is a real context. A call too long on its own is cut at
    ``max_len`` (its completion's first tokens kept, counted as truncated), or dropped when its
    prompt alone reaches ``max_len`` (nothing of it could be trained).
    """
    built = Built()
    for call in chain:
        if built.calls:
            new = call.prompt[call.offset:]
            if max_len is None or len(built.input_ids) + len(new) + len(call.completion) <= max_len:
                _append(built, call, new)
                continue
            yield built
            built = Built()
        if max_len is not None and len(call.prompt) >= max_len:
            stats.dropped["prompt over --max-len"] += 1
            continue
        _append(built, call, call.prompt)
        if max_len is not None and len(built.input_ids) > max_len:
            built.truncated = len(built.input_ids) - max_len
            del built.input_ids[max_len:], built.loss_mask[max_len:]
            if built.logprobs is not None:
                del built.logprobs[max_len:]
            stats.truncated += 1
            yield built
            built = Built()
    if built.calls:
        yield built


def sample_id(owner: str, built: Built) -> str:
    """``<rollout or task id>/<first trained call>-<hash of the tokens and mask>``: the same
    input and options give the same id; other content never shares it."""
    digest = hashlib.blake2b(digest_size=4)
    digest.update(array("q", built.input_ids).tobytes())
    digest.update(bytes(built.loss_mask))
    return f"{owner}/{built.calls[0].index}-{digest.hexdigest()}"


def ancestors(call: CallView, by_index: dict[int, CallView]) -> list[int]:
    """The calls whose turns come before ``call`` in its context, oldest first."""
    found = []
    parent = call.parent
    while parent is not None:
        found.append(parent)
        parent = by_index[parent].parent
    return found[::-1]


def calls_info(built: Built, by_index: dict[int, CallView], **extra: Any) -> dict:
    """The sample's ``calls`` field: which calls it trains, which are context, mismatches."""
    return {
        "count": len(built.calls),
        "indices": [c.index for c in built.calls],
        "context": ancestors(built.calls[0], by_index),
        "mismatches": [c.mismatch for c in built.calls if c.mismatch],
        "truncated": built.truncated,
        **extra,
    }
