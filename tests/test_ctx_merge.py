"""ctx-merge: merge LLM-call timelines into training samples with loss masks.

Property tests run random timelines (chains, branches, several agents, template rewrites,
re-tokenised completions, cut completions) through a small ChatML-like template whose tokens
are easy to check, against brute-force oracles; then the real tokenizer and chat template of
the embedded model, the real CLI, TRL's SFTTrainer, and a real vLLM server.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracewheel.chat_template import CHAT_TEMPLATE
from tracewheel.records import validate_sample
from tracewheel_ctx_merge.cli import main as ctx_merge
from tracewheel_ctx_merge.merge import merge_rollout
from tracewheel_ctx_merge.mismatch import splice_offset
from tracewheel_ctx_merge.prefix_tree import PrefixTree, common_prefix
from tracewheel_ctx_merge.sequences import MergeStats
from tracewheel_ctx_merge.text_mode import merge_task

# ---------------------------------------------------------------------------------------------
# A toy chat template over a toy vocabulary.
#
# Every message renders as START ROLE <content> END NL; a prompt ends with START ROLE(assistant).
# Letters a-z are ids 10-35 and encode one token per letter (the canonical tokenization); ids
# 1000 + 100*a + b decode to two letters (a sampled completion may use them: re-encoding its text
# gives other tokens, a `retoken` mismatch). The template drops every "q" from assistant turns
# it renders from messages (a `template` mismatch when a completion held one), like templates
# that drop earlier reasoning. Ids 200+ are one-off markers that keep each completion unique.

START, END, NL = 1, 2, 3
ROLES = {"system": 5, "user": 6, "assistant": 7, "tool": 8}
SYMBOLS = {START: "<s>", END: "</s>", NL: "\n", **{v: f"[{k}]" for k, v in ROLES.items()}}


def piece(token: int) -> str:
    if token in SYMBOLS:
        return SYMBOLS[token]
    if 10 <= token < 36:
        return chr(ord("a") + token - 10)
    if 200 <= token < 1000:
        return chr(0x100 + token - 200)
    if token >= 1000:
        return piece((token - 1000) // 100) + piece((token - 1000) % 100)
    raise ValueError(token)


class ToyTokenizer:
    eos_token_id = END

    def decode(self, ids, **kwargs) -> str:
        return "".join(piece(t) for t in ids)


TOY = ToyTokenizer()


def encode(text: str) -> list[int]:
    return [ord(c) - ord("a") + 10 if "a" <= c <= "z" else 200 + ord(c) - 0x100 for c in text]


def render(messages: list[dict]) -> list[int]:
    ids = []
    for m in messages:
        text = m["content"]
        if m["role"] == "assistant":
            text = text.replace("q", "")
        ids += [START, ROLES[m["role"]], *encode(text), END, NL]
    return ids + [START, ROLES["assistant"]]


SYSTEMS = {"A": "systema", "B": "systemb"}

# One step of a timeline: (parent choice, agent for a new root, new message, completion
# letters, pair tokens to mix in, cut by length?)
step_strategy = st.tuples(
    st.one_of(st.just(-1), st.just(-2), st.integers(0, 30)),  # -1 latest, -2 new root
    st.sampled_from(["A", "B"]),
    st.text("abcdefgh", min_size=1, max_size=4),
    st.text("abcdq", min_size=0, max_size=5),
    st.lists(st.tuples(st.integers(10, 35), st.integers(10, 35)), max_size=2),
    st.booleans(),
)


def build_timeline(steps) -> list[dict]:
    """Calls from steps: each continues a chosen earlier call of its agent (its messages repeat
    that call's messages and output), or starts a new conversation."""
    calls: list[dict] = []
    for i, (choice, agent, said, letters, pairs, cut) in enumerate(steps):
        if choice == -2 or not calls:
            index = None
        else:
            index = len(calls) - 1 if choice == -1 else choice % len(calls)
        parent = None if index is None else calls[index]
        if parent is None:
            messages = [{"role": "system", "content": SYSTEMS[agent]},
                        {"role": "user", "content": said}]
        else:
            agent = parent["agent"]
            role = "tool" if len(said) % 2 else "user"
            messages = [*parent["messages"], parent["output"], {"role": role, "content": said}]
        content = [200 + i, *encode(letters)] + [1000 + 100 * a + b for a, b in pairs]
        completion = content if cut else [*content, END]
        calls.append({
            "agent": agent,
            "messages": messages,
            "prompt_ids": render(messages),
            "completion_ids": completion,
            "logprobs": [-(i + 1) - k / 100 for k in range(len(completion))],
            "output": {"role": "assistant", "content": TOY.decode(content)},
            "finish_reason": "length" if cut else "stop",
            "model": "toy",
            "_parent": index,
        })
    return calls


def rollout_of(calls: list[dict], **fields) -> dict:
    clean = [{k: v for k, v in c.items() if not k.startswith("_")} for c in calls]
    return {"id": "task-1/0", "task_id": "task-1", "group": "task-1", "sample": 0,
            "calls": clean, "reward": 0.5, "status": "ok", "error": None, **fields}


def context(call: dict) -> list[int]:
    return call["prompt_ids"] + call["completion_ids"]


def exact_parent(calls: list[dict], i: int) -> int | None:
    """Oracle: the earlier call of the same agent whose whole context is the longest prefix of
    call i's prompt (the latest among equals)."""
    best, best_len = None, -1
    prompt = calls[i]["prompt_ids"]
    for j in range(i):
        ctx = context(calls[j])
        if (calls[j]["agent"] == calls[i]["agent"] and len(ctx) >= best_len
                and prompt[:len(ctx)] == ctx):
            best, best_len = j, len(ctx)
    return best


def is_mismatch(calls: list[dict], i: int) -> bool:
    parent = calls[i]["_parent"]
    return parent is not None and \
        calls[i]["prompt_ids"][:len(context(calls[parent]))] != context(calls[parent])


def leaves(parents: dict[int, int | None]) -> int:
    return len(set(parents) - set(parents.values()))


def merge(calls, **options) -> tuple[list[dict], MergeStats]:
    stats = MergeStats()
    samples = merge_rollout(rollout_of(calls), tokenizer_for=lambda model: TOY, stats=stats,
                            **options)
    return samples, stats


def runs(mask: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) of each run of equal values."""
    found, start = [], 0
    for k in range(1, len(mask) + 1):
        if k == len(mask) or mask[k] != mask[start]:
            found.append((mask[start], start, k))
            start = k
    return found


def check_sample_against_calls(sample: dict, calls: list[dict]) -> None:
    """The invariants every sample keeps, whatever the mode."""
    validate_sample(sample)
    ids, mask, lps = sample["input_ids"], sample["loss_mask"], sample["logprobs"]
    trained = [calls[i] for i in sample["calls"]["indices"]]
    assert len(ids) == len(mask) == len(lps)
    # Mask-1 tokens are the trained calls' completions, in order, with their logprobs.
    assert [t for t, m in zip(ids, mask, strict=True) if m] == \
        [t for c in trained for t in c["completion_ids"]]
    assert [lp for lp, m in zip(lps, mask, strict=True) if m] == \
        [lp for c in trained for lp in c["logprobs"]]
    assert all(lp == 0.0 for lp, m in zip(lps, mask, strict=True) if not m)
    # Masked text is the completions' text.
    assert TOY.decode([t for t, m in zip(ids, mask, strict=True) if m]) == \
        "".join(TOY.decode(c["completion_ids"]) for c in trained)
    # Runs alternate prompt part / completion: the first prompt part is the first call's whole
    # prompt, each later one a tail of the call's own prompt: no prompt token has mask 1.
    parts = [(start, end) for value, start, end in runs(mask) if value == 0]
    assert ids[parts[0][0]:parts[0][1]] == trained[0]["prompt_ids"]
    for (start, end), call in zip(parts[1:], trained[1:], strict=True):
        assert call["prompt_ids"][-(end - start):] == ids[start:end]
    assert sample["agent"] == trained[0]["agent"]


def check_every_completion_once(samples: list[dict], calls: list[dict]) -> None:
    trained = Counter(i for s in samples for i in s["calls"]["indices"])
    assert trained == Counter(range(len(calls)))


# ---------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=300, deadline=None)
@given(st.lists(step_strategy, min_size=1, max_size=14))
def test_every_completion_token_is_trained_exactly_once_in_order(steps):
    calls = build_timeline(steps)
    for mode in ("new", "splice"):
        samples, stats = merge(calls, on_mismatch=mode)
        check_every_completion_once(samples, calls)
        for sample in samples:
            check_sample_against_calls(sample, calls)
        assert stats.trained == sum(len(c["completion_ids"]) for c in calls)
        assert stats.tokens_merged <= stats.tokens_separate


@settings(max_examples=300, deadline=None)
@given(st.lists(step_strategy, min_size=1, max_size=14))
def test_samples_are_the_fewest_the_forest_allows(steps):
    """Default: one sample per leaf of the exact-prefix forest. Splice: one per leaf of the
    conversation forest (mismatched calls spliced onto the call their messages continue)."""
    calls = build_timeline(steps)
    exact = {i: exact_parent(calls, i) for i in range(len(calls))}
    spliced = {i: calls[i]["_parent"] if is_mismatch(calls, i) else exact[i]
               for i in range(len(calls))}
    samples, stats = merge(calls)
    assert len(samples) == leaves(exact)
    assert sum(stats.mismatches.values()) == sum(is_mismatch(calls, i) for i in exact)
    samples, stats = merge(calls, on_mismatch="splice")
    assert len(samples) == leaves(spliced)
    assert stats.spliced == sum(stats.mismatches.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(step_strategy, min_size=1, max_size=14))
def test_exact_merges_keep_every_call_context_as_a_prefix(steps):
    """Default mode: within a sample, each trained call's whole context (its prompt and
    completion) is a prefix of the sample, its completion exactly where the mask is 1."""
    calls = build_timeline(steps)
    samples, _ = merge(calls)
    for sample in samples:
        ids, mask = sample["input_ids"], sample["loss_mask"]
        ones = 0
        for i in sample["calls"]["indices"]:
            ctx, start = context(calls[i]), len(calls[i]["prompt_ids"])
            assert ids[:len(ctx)] == ctx
            assert mask[start:len(ctx)] == [1] * (len(ctx) - start)
            ones += len(ctx) - start
        assert sum(mask) == ones


def test_mismatch_kinds_are_told_apart():
    base = [{"role": "system", "content": "s"}, {"role": "user", "content": "go"}]

    def call(messages, completion, content):
        return {"agent": "A", "messages": messages, "prompt_ids": render(messages),
                "completion_ids": completion, "logprobs": [-0.1] * len(completion),
                "output": {"role": "assistant", "content": content}, "finish_reason": "stop"}

    def follow(first, said="more"):
        return call([*first["messages"], first["output"], {"role": "user", "content": said}],
                    [*encode("ok"), END], "ok")

    # "ab" sampled as one pair token: the same text, other tokens.
    retoken = call(base, [1000 + 100 * 10 + 11, END], "ab")
    # "aqb" rendered back as "ab": the template rewrote the turn.
    template = call(base, [*encode("aqb"), END], "aqb")
    clean = call(base, [*encode("ab"), END], "ab")
    # where the prompt parts from the context: at the pair token; after the "a" of "aqb"
    for first, kind, at in ((retoken, "retoken", 0), (template, "template", 1), (clean, None, 0)):
        samples, stats = merge([first, follow(first)])
        assert dict(stats.mismatches) == ({kind: 1} if kind else {})
        assert len(samples) == (2 if kind else 1)
        if kind:
            (info,) = samples[1]["calls"]["mismatches"]
            assert info == {"call": 1, "with": 0, "kind": kind, "at": len(first["prompt_ids"]) + at,
                            "spliced": False}
        samples, _ = merge([first, follow(first)], on_mismatch="splice")
        assert len(samples) == 1
    # Without a tokenizer the texts cannot be compared.
    stats = MergeStats()
    merge_rollout(rollout_of([template, follow(template)]), stats=stats)
    assert dict(stats.mismatches) == {"other": 1}


def test_a_sample_says_which_weights_sampled_its_calls():
    calls = build_timeline([(-2, "A", "hi", "xy", [], False), (-1, "A", "go", "z", [], False),
                            (-2, "B", "yo", "w", [], False)])
    for call, version in zip(calls, ["1", "2", "2"], strict=True):
        call["weight_version"] = version
    samples, _ = merge(calls)
    by_agent = {s["agent"]: s for s in samples}
    assert by_agent["A"]["weight_version"] == ["1", "2"]  # the weights changed between calls
    assert by_agent["B"]["weight_version"] == "2"
    for call in calls:
        call.pop("weight_version")
    assert all(s["weight_version"] is None for s in merge(calls)[0])


def test_each_agent_learns_from_its_own_reward_where_the_workflow_gives_one():
    calls = build_timeline([(-2, "A", "hi", "xy", [], False), (-2, "B", "yo", "w", [], False)])
    samples = merge_rollout(rollout_of(calls, agent_rewards={"A": 1.0}),
                            tokenizer_for=lambda model: TOY)
    assert {s["agent"]: s["reward"] for s in samples} == {"A": 1.0, "B": 0.5}  # B: the rollout's


def test_a_branch_is_not_a_mismatch():
    """Two calls continuing the same call with different new messages (a retry, parallel
    sub-questions) are branches: two samples, the shared part trained once."""
    base = [{"role": "system", "content": "s"}, {"role": "user", "content": "go"}]
    first = {"agent": "A", "messages": base, "prompt_ids": render(base),
             "completion_ids": [200, END], "logprobs": [-0.1, -0.2],
             "output": {"role": "assistant", "content": "\u0100"}, "finish_reason": "stop"}
    calls = [first]
    for k, said in enumerate(["left", "right"]):
        messages = [*base, first["output"], {"role": "user", "content": said}]
        calls.append({**first, "messages": messages, "prompt_ids": render(messages),
                      "completion_ids": [201 + k, END]})
    samples, stats = merge(calls)
    assert not stats.mismatches
    assert [s["calls"]["indices"] for s in samples] == [[0, 1], [2]]
    assert samples[1]["calls"]["context"] == [0]
    assert samples[1]["input_ids"][:len(context(first))] == context(first)
    assert sum(samples[1]["loss_mask"]) == 2


def test_a_call_with_another_tool_list_starts_its_own_timeline():
    """An agent's last call without tools (ReActAgent at its step limit): another system turn,
    so another context, not a mismatch of the calls that had the tools."""
    tools = [{"type": "function", "function": {"name": "f"}}]
    base = [{"role": "system", "content": "s"}, {"role": "user", "content": "go"}]
    first = {"agent": "A", "messages": base, "tools": tools, "prompt_ids": render(base),
             "completion_ids": [*encode("aqb"), END], "logprobs": [-0.1] * 4,
             "output": {"role": "assistant", "content": "aqb"}, "finish_reason": "stop"}
    messages = [*base, first["output"], {"role": "user", "content": "answer"}]
    last = {**first, "tools": None, "messages": messages, "prompt_ids": render(messages),
            "completion_ids": [*encode("ok"), END], "logprobs": [-0.1] * 3}
    samples, stats = merge([first, last])
    assert not stats.mismatches
    assert [s["calls"]["indices"] for s in samples] == [[0], [1]]


@settings(max_examples=200, deadline=None)
@given(st.lists(step_strategy, min_size=1, max_size=12), st.integers(4, 60))
def test_max_len_splits_at_call_boundaries_and_counts_cuts(steps, max_len):
    calls = build_timeline(steps)
    samples, stats = merge(calls, max_len=max_len)
    seen = Counter(i for s in samples for i in s["calls"]["indices"])
    assert all(n == 1 for n in seen.values())
    dropped = [i for i in range(len(calls)) if len(calls[i]["prompt_ids"]) >= max_len]
    assert stats.dropped["prompt over --max-len"] == len(dropped)
    assert set(seen) == set(range(len(calls))) - set(dropped)
    for sample in samples:
        assert len(sample["input_ids"]) <= max_len
        if sample["calls"]["truncated"]:
            # a cut sample trains its one call's first completion tokens
            (i,) = sample["calls"]["indices"]
            full = context(calls[i])
            assert sample["input_ids"] == full[:max_len]
            assert sample["calls"]["truncated"] == len(full) - max_len
        else:
            check_sample_against_calls(sample, calls)
    assert stats.truncated == sum(bool(s["calls"]["truncated"]) for s in samples)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=8), min_size=1, max_size=12),
       st.lists(st.integers(0, 3), max_size=10))
def test_prefix_tree_agrees_with_brute_force(stored, probe):
    tree = PrefixTree()
    for i, tokens in enumerate(stored):
        tree.insert(tokens, i)
    found = tree.match(probe)
    prefixes = [i for i, t in enumerate(stored) if probe[:len(t)] == t]
    best = max((len(stored[i]) for i in prefixes), default=None)
    if best is None:
        assert found.exact is None
    else:
        assert found.exact == max(i for i in prefixes if len(stored[i]) == best)
        assert found.exact_len == best

    def common(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    assert found.common == max(common(probe, t) for t in stored)
    if found.near is not None:
        assert common(probe, stored[found.near]) == found.common
        # the latest of those sharing the longest prefix
        assert found.near == max(i for i, t in enumerate(stored)
                                 if common(probe, t) == found.common)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(0, 400), st.integers(0, 5), st.integers(0, 5))
def test_common_prefix_finds_where_long_sequences_part(length, part, i, j):
    a = list(range(1000, 1000 + length + 10))
    b = [*a[:part], -1, *a[part + 1:]] if part < len(a) else list(a)
    n = min(len(a) - i, len(b) - j, length)
    expected = next((k for k in range(n) if a[i + k] != b[j + k]), n)
    assert common_prefix(a, i, b, j, n) == expected


def test_splice_offset_aligns_on_the_end_of_turn_token():
    ctx = [1, 2, 9, 9, 2]          # system turn, then a completion ending with its end token
    prompt = [1, 2, 9, 8, 2, 3, 6, 2]
    assert splice_offset(ctx, prompt, 2) == 5          # after the turn's own end token
    assert splice_offset(ctx[:-1], prompt, 2) == 4     # cut completion: the prompt's end token
    assert splice_offset(ctx, [1, 2, 9], 2) is None    # nothing to align on
    assert splice_offset(ctx, prompt, None) is None


def test_linear_chains_of_many_turns_cost_one_sample():
    steps = [(-1, "A", "x", "ab", [], False)] * 20
    calls = build_timeline(steps)
    samples, stats = merge(calls)
    assert len(samples) == 1
    assert samples[0]["input_ids"] == context(calls[-1])
    assert stats.tokens_merged == len(context(calls[-1]))
    assert stats.tokens_separate == sum(len(context(c)) for c in calls)


def test_samples_carry_rollout_fields_and_stable_ids():
    calls = build_timeline([(-1, "A", "x", "ab", [], False)] * 3)
    rollout = rollout_of(calls, reward_info={"rule": "exact"}, workflow="w.py:run")
    first = merge_rollout(rollout)
    again = merge_rollout(json.loads(json.dumps(rollout)))
    assert first == again
    (sample,) = first
    assert sample["id"].startswith("task-1/0/0-")
    assert {k: sample[k] for k in ("rollout_id", "task_id", "group", "agent", "reward",
                                   "sample", "reward_info", "workflow", "status")} == {
        "rollout_id": "task-1/0", "task_id": "task-1", "group": "task-1", "agent": "A",
        "reward": 0.5, "sample": 0, "reward_info": {"rule": "exact"}, "workflow": "w.py:run",
        "status": "ok"}
    assert "final" not in sample
    assert sample["calls"] == {"count": 3, "indices": [0, 1, 2], "context": [],
                               "mismatches": [], "truncated": 0}
    # other options, other content: never the same id
    (cut, *_rest) = merge_rollout(rollout, max_len=len(calls[0]["prompt_ids"]) + 3)
    assert cut["id"] != sample["id"]


def test_run_takes_a_config_as_the_command_does(tmp_path, capsys):
    """run() over MergeConfig is what the command calls: the config's fields are its options."""
    import io

    from tracewheel_ctx_merge.config import MergeConfig
    from tracewheel_ctx_merge.run import run

    calls = build_timeline([(-1, "A", "x", "ab", [], False)] * 3)
    failed = {**rollout_of(calls), "id": "task-2/0", "status": "error", "error": "boom"}
    data = io.BytesIO((json.dumps(rollout_of(calls)) + "\n" + json.dumps(failed) + "\n").encode())
    out = tmp_path / "trl.jsonl"
    run(MergeConfig(format="trl"), data, str(out), quiet=False)
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(row) == ["assistant_masks", "id", "input_ids"]
    assert "2 read, 3 calls, 1 samples, 1 failed (1 error, skipped)" in capsys.readouterr().err
    data.seek(0)
    run(MergeConfig(keep_failed=True), data, str(out), quiet=True)
    assert len(out.read_text().splitlines()) == 2


def test_calls_without_token_ids_are_counted_not_merged():
    calls = build_timeline([(-1, "A", "x", "ab", [], False)] * 2)
    calls[1] = {**calls[1], "prompt_ids": [], "completion_ids": [], "logprobs": []}
    samples, stats = merge(calls)
    assert [s["calls"]["indices"] for s in samples] == [[0]]
    assert stats.dropped == {"calls without token ids": 1}


# ---------------------------------------------------------------------------------------------
# The real tokenizer and chat template of the embedded model

TEXT = st.lists(st.sampled_from(list("ab xyz12+=.\n") + ["é", "中", " the", "<tool_call>"]),
                min_size=1, max_size=12).map("".join)


@pytest.fixture(scope="module")
def template():
    return CHAT_TEMPLATE.read_text()


def real_calls(tokenizer, template, turns):
    """Calls as vLLM would record them: prompts rendered with the served template, each
    completion the assistant text encoded plus the end-of-turn token."""
    messages = [{"role": "system", "content": "You are a helper."}]
    calls = []
    for user, answer in turns:
        messages = [*messages, {"role": "user", "content": user}]
        prompt = tokenizer.apply_chat_template(messages, chat_template=template,
                                               add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        completion = tokenizer.encode(answer, add_special_tokens=False) + \
            [tokenizer.eos_token_id]
        calls.append({"agent": "helper", "messages": messages, "prompt_ids": list(prompt),
                      "completion_ids": completion, "logprobs": [-0.5] * len(completion),
                      "output": {"role": "assistant", "content": answer},
                      "finish_reason": "stop", "model": "smollm2-135m"})
        messages = [*messages, {"role": "assistant", "content": answer}]
    return calls


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4))
def test_real_tokenizer_masked_tokens_decode_to_the_completions(tokenizer, template, turns):
    calls = real_calls(tokenizer, template, turns)
    for mode in ("new", "splice"):
        stats = MergeStats()
        samples = merge_rollout(rollout_of(calls), on_mismatch=mode,
                                tokenizer_for=lambda model: tokenizer, stats=stats)
        check_every_completion_once(samples, calls)
        for sample in samples:
            ids, mask = sample["input_ids"], sample["loss_mask"]
            trained = [calls[i] for i in sample["calls"]["indices"]]
            assert tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m]) == \
                "".join(c["output"]["content"] + "<|im_end|>" for c in trained)
            assert "<|im_start|>" not in tokenizer.decode(
                [t for t, m in zip(ids, mask, strict=True) if m])
        # one sample, unless a mismatch (reported with its kind) prevented it
        mismatches = sum(stats.mismatches.values())
        assert len(samples) == (1 if mode == "splice" else 1 + mismatches)
        assert set(stats.mismatches) <= {"retoken", "template"}


def test_real_tokenizer_retokenised_completion_is_a_retoken_mismatch(tokenizer, template):
    calls = real_calls(tokenizer, template, [("Say hello.", "Hello world"), ("Again.", "Hi")])
    # The model sampled "Hello" as two tokens; re-encoding the text gives one.
    first = calls[0]
    hel, lo = tokenizer.encode("Hel", add_special_tokens=False), tokenizer.encode(
        "lo", add_special_tokens=False)
    assert tokenizer.encode("Hello", add_special_tokens=False) != hel + lo
    first["completion_ids"] = hel + lo + first["completion_ids"][1:]
    first["logprobs"] = [-0.5] * len(first["completion_ids"])
    stats = MergeStats()
    samples = merge_rollout(rollout_of(calls), tokenizer_for=lambda m: tokenizer, stats=stats)
    assert stats.mismatches == {"retoken": 1} and len(samples) == 2
    samples = merge_rollout(rollout_of(calls), on_mismatch="splice",
                            tokenizer_for=lambda m: tokenizer)
    (sample,) = samples
    masked = [t for t, m in zip(sample["input_ids"], sample["loss_mask"], strict=True) if m]
    assert masked == first["completion_ids"] + calls[1]["completion_ids"]
    # the spliced sample holds the sampled tokens, then the second call's new turns
    assert tokenizer.decode(sample["input_ids"]) == tokenizer.decode(
        calls[1]["prompt_ids"] + calls[1]["completion_ids"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4))
def test_text_mode_trains_assistant_content_and_end_token_only(tokenizer, template, turns):
    messages = [{"role": "system", "content": "You are a helper."}]
    for user, answer in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    task = {"id": "task-9", "query": turns[-1][0], "messages": messages[:-1],
            "answer": turns[-1][1], "trajectory": [], "status": "ok"}
    stats = MergeStats()
    (sample,) = merge_task(task, tokenizer=tokenizer, chat_template=template, stats=stats)
    validate_sample(sample)
    ids, mask = sample["input_ids"], sample["loss_mask"]
    # only the last answer is this task's own turn: earlier ones are context
    assert tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m]) == \
        turns[-1][1] + "<|im_end|>"
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False).removesuffix("\n")
    assert sample["logprobs"] is None and stats.trained == sum(mask)


def test_text_mode_chains_a_trajectory_and_trains_each_llm_call(tokenizer, template):
    system = {"role": "system", "content": "You solve math."}
    user = {"role": "user", "content": "What is 2+3?"}
    tool_call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "calc", "arguments": '{"expression": "2+3"}'}}]}
    result = {"role": "tool", "tool_call_id": "c1", "content": "5"}
    final = {"role": "assistant", "content": "2 + 3 = 5, so \\boxed{5}"}
    tools = [{"type": "function", "function": {"name": "calc", "parameters": {}}}]
    task = {"id": "task-7", "query": user["content"], "messages": [system, user],
            "answer": final["content"], "status": "ok", "source": {"agent": "Solver"},
            "trajectory": [
                {"type": "llm", "messages": [system, user], "tools": tools, "output": tool_call},
                {"type": "tool", "name": "calc", "result": "5"},
                {"type": "llm", "messages": [system, user, tool_call, result], "tools": tools,
                 "output": final}]}
    stats = MergeStats()
    (sample,) = merge_task(task, tokenizer=tokenizer, chat_template=template, stats=stats)
    masked = tokenizer.decode([t for t, m in zip(sample["input_ids"], sample["loss_mask"],
                                                 strict=True) if m])
    assert masked == ('<tool_call>\n{"name": "calc", "arguments": {"expression": "2+3"}}\n'
                      '</tool_call><|im_end|>' + final["content"] + "<|im_end|>")
    assert sample["calls"]["indices"] == [0, 2] and sample["calls"]["turns"] == [2, 4]
    assert sample["agent"] == "Solver" and sample["task_id"] == "task-7"
    assert stats.calls == 2 and stats.tokens_separate > stats.tokens_merged


# ---------------------------------------------------------------------------------------------
# The command line


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def invoke(args, stdin=""):
    result = CliRunner().invoke(ctx_merge, [str(a) for a in args], input=stdin)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, records


SUMMARY = re.compile(
    r"ctx-merge: (?P<read>\d+) read, (?P<calls>\d+) calls, (?P<samples>\d+) samples, "
    r"(?P<rest>.*) in \d+\.\d s$", re.M)


def test_cli_merges_rollouts_and_prints_the_summary():
    chain = build_timeline([(-1, "A", "x", "ab", [], False)] * 4)
    branchy = build_timeline([(-1, "A", "x", "ab", [], False), (0, "A", "y", "c", [], False),
                              (0, "A", "z", "d", [], False)])
    result, records = invoke([], jsonl(rollout_of(chain), rollout_of(branchy, id="task-1/1")))
    assert result.exit_code == 0, result.output
    assert [r["rollout_id"] for r in records] == ["task-1/0", "task-1/1", "task-1/1"]
    for record in records:
        validate_sample(record)
    separate = sum(len(context(c)) for c in chain + branchy)
    merged = sum(len(r["input_ids"]) for r in records)
    trained = sum(len(c["completion_ids"]) for c in chain + branchy)
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"ctx-merge: 2 read, 7 calls, 3 samples, 0 failed, 0 mismatches, 0 invalid, "
        f"training tokens {separate} as separate calls, {merged} merged "
        f"({separate / merged:.2f}x fewer), {trained} trained in ")


def test_cli_counts_failed_rollouts_and_keeps_them_on_request():
    calls = build_timeline([(-1, "A", "x", "ab", [], False)] * 2)
    good = rollout_of(calls)
    broken = rollout_of(calls, id="task-1/1", status="error", error="tool crashed")
    late = rollout_of(calls, id="task-1/2", status="timeout", error="300 s")
    result, records = invoke(["-v"], jsonl(good, broken, late))
    assert result.exit_code == 0
    assert [r["rollout_id"] for r in records] == ["task-1/0"]
    assert "ctx-merge: task-1/1: skipped, error: tool crashed" in result.stderr
    assert "3 read, 2 calls, 1 samples, 2 failed (1 error, skipped, 1 timeout, skipped)" \
        in result.stderr
    result, records = invoke(["--keep-failed"], jsonl(good, broken, late))
    assert [r["rollout_id"] for r in records] == ["task-1/0", "task-1/1", "task-1/2"]
    assert records[1]["status"] == "error" and records[1]["error"] == "tool crashed"
    assert "2 failed (2 kept)" in result.stderr


def test_cli_reports_mismatches_by_kind_and_splices_on_request():
    calls = build_timeline([(-1, "A", "x", "aqb", [], False), (-1, "A", "y", "c", [], False)])
    result, records = invoke([], jsonl(rollout_of(calls)))
    assert len(records) == 2
    assert "2 samples, 0 failed, 1 mismatches (1 other), 0 invalid" in result.stderr
    assert records[1]["calls"]["mismatches"][0]["kind"] == "other"
    result, records = invoke(["--on-mismatch", "splice"], jsonl(rollout_of(calls)))
    assert len(records) == 1
    assert "1 samples, 0 failed, 1 mismatches (1 other), 1 spliced, 0 invalid" in result.stderr
    assert result.stderr.splitlines()[0] == (
        "ctx-merge: no tokenizer for model 'toy' (toy: no such model directory; use a Hugging "
        "Face model directory or 'smollm2-135m' (the embedded model)); mismatch kinds count as "
        "'other' (give --tokenizer MODEL)")


def test_cli_trl_format_has_the_columns_sfttrainer_reads():
    calls = build_timeline([(-1, "A", "x", "ab", [], False)] * 2)
    result, records = invoke(["--format", "trl"], jsonl(rollout_of(calls)))
    (record,) = records
    assert set(record) == {"id", "input_ids", "assistant_masks"}
    assert record["input_ids"] == context(calls[-1])
    assert sum(record["assistant_masks"]) == sum(len(c["completion_ids"]) for c in calls)


def test_cli_takes_its_options_from_a_config_section(tmp_path):
    calls = build_timeline([(-1, "A", "x", "aqb", [], False), (-1, "A", "y", "c", [], False)])
    config = tmp_path / "flywheel.yaml"
    config.write_text("ctx-merge:\n  on-mismatch: splice\n  format: trl\n")
    result, records = invoke(["--config", config], jsonl(rollout_of(calls)))
    assert result.exit_code == 0, result.output
    (record,) = records
    assert set(record) == {"id", "input_ids", "assistant_masks"}
    result, records = invoke(["--config", config, "--on-mismatch", "new"],
                             jsonl(rollout_of(calls)))
    assert len(records) == 2  # the flag wins


def test_cli_max_len_counts_truncated_and_dropped_calls():
    calls = build_timeline([(-1, "A", "x", "abcd", [], False)] * 3)
    max_len = len(calls[0]["prompt_ids"]) + 2
    result, records = invoke(["--max-len", max_len], jsonl(rollout_of(calls)))
    assert result.exit_code == 0
    assert [r["calls"]["truncated"] for r in records] == [len(context(calls[0])) - max_len]
    assert "1 truncated, 2 dropped (2 prompt over --max-len)" in result.stderr


def test_cli_names_the_line_of_a_bad_rollout(tmp_path):
    calls = build_timeline([(-1, "A", "x", "ab", [], False)])
    bad = rollout_of(calls)
    bad["calls"][0]["logprobs"] = bad["calls"][0]["logprobs"][:-1]
    path = tmp_path / "rollouts.jsonl"
    path.write_text(jsonl(rollout_of(calls), bad))
    result, records = invoke([path])
    assert result.exit_code == 1
    assert f"Error: {path}:2: not a valid rollout record: calls.0: " \
           f"{len(calls[0]['completion_ids']) - 1} logprobs for " \
           f"{len(calls[0]['completion_ids'])} completion tokens" in result.output
    result, records = invoke(["--skip-invalid", path])
    assert result.exit_code == 0 and len(records) == 1
    assert "1 invalid (1 bad record)" in result.stderr


def test_cli_task_records_need_a_tokenizer():
    task = {"id": "t", "query": "hi", "messages": [{"role": "user", "content": "hi"}],
            "answer": "hello"}
    result, _ = invoke([], jsonl(task))
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: <stdin>:1: a task record has no token ids: give --tokenizer MODEL to render it "
        "(text mode) (use --skip-invalid to skip bad lines)")
    result, _ = invoke(["--chat-template", "model"], jsonl(task))
    assert result.exit_code == 2
    assert "--chat-template needs --tokenizer" in result.output


def test_cli_writes_the_output_file_atomically(tmp_path):
    calls = build_timeline([(-1, "A", "x", "ab", [], False)] * 2)
    out = tmp_path / "samples.jsonl"
    result, records = invoke(["-q", "-o", out], jsonl(rollout_of(calls)))
    assert result.exit_code == 0 and records == [] and result.stderr == ""
    (sample,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert sample["input_ids"] == context(calls[-1])
    assert [p.name for p in tmp_path.iterdir()] == ["samples.jsonl"]


STUDIO = sorted((Path(__file__).parent / "fixtures" / "studio").glob("*.sqlite"))


@pytest.mark.parametrize("db", STUDIO, ids=lambda p: p.stem)
def test_cli_text_mode_on_real_trace_export_output(db, tokenizer):
    """trace-export | ctx-merge --tokenizer smollm2-135m: every ok turn becomes samples whose
    trained text is its LLM calls' outputs, each ending with <|im_end|>; failed turns are
    counted."""
    from tracewheel_trace_export.cli import main as trace_export

    exported = CliRunner().invoke(trace_export, [str(db)])
    tasks = [json.loads(line) for line in exported.stdout.splitlines()]
    ok = [t for t in tasks if t["status"] == "ok"]
    assert ok
    result, records = invoke(["--tokenizer", "smollm2-135m"], exported.stdout)
    assert result.exit_code == 0, result.output
    assert {r["task_id"] for r in records} == {t["id"] for t in ok}
    failed = len(tasks) - len(ok)
    assert f"{len(tasks)} read" in result.stderr
    assert f"{failed} failed ({failed} error, skipped)" in result.stderr
    llm_calls = sum(1 for t in ok for c in t["trajectory"] if c["type"] == "llm" and c["output"])
    assert f"{llm_calls} calls" in result.stderr
    assert sum(r["calls"]["count"] for r in records) == llm_calls
    for record in records:
        validate_sample(record)
        task = next(t for t in ok if t["id"] == record["task_id"])
        ids, mask = record["input_ids"], record["loss_mask"]
        spans = [tokenizer.decode(ids[a:b]) for v, a, b in runs(mask) if v]
        assert len(spans) == record["calls"]["count"]
        assert all(s.endswith("<|im_end|>") and "<|im_start|>" not in s for s in spans)
        last = max(i for i, c in enumerate(task["trajectory"]) if c["type"] == "llm")
        if record["calls"]["indices"][-1] == last and task["trajectory"][last]["output"].get(
                "content"):
            assert task["answer"].strip() in spans[-1]


@pytest.mark.slow
def test_trl_sfttrainer_turns_assistant_masks_into_labels(tmp_path, embedded_model_dir):
    """TRL 1.16 takes --format trl output as pre-tokenized data and masks what we masked."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    calls = build_timeline([(-1, "A", "x", "ab", [], False)] * 3)
    _, records = invoke(["--format", "trl"], jsonl(rollout_of(calls)))
    config = SFTConfig(output_dir=str(tmp_path), report_to=[], max_length=None,
                       per_device_train_batch_size=1, use_cpu=True)
    trainer = SFTTrainer(model=str(embedded_model_dir), args=config,
                         train_dataset=Dataset.from_list(records))
    (row,) = trainer.train_dataset
    assert row["input_ids"] == records[0]["input_ids"]
    assert row["labels"] == [t if m else -100 for t, m in
                             zip(records[0]["input_ids"], records[0]["assistant_masks"],
                                 strict=True)]


# ---------------------------------------------------------------------------------------------
# Real rollout output: a real vLLM server (CPU build), its real token ids and logprobs

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]},
    },
}
FEW_SHOT = [
    {"role": "system", "content": "You are a calculator agent. Use the calculator tool."},
    {"role": "user", "content": "What is 2 + 2? Use the calculator."},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "calculator", "arguments": '{"expression": "2 + 2"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "4"},
    {"role": "assistant", "content": "2 + 2 = 4"},
    {"role": "user", "content": "What is 12 * 4? Use the calculator."},
]


def recorded_call(client, messages, **kwargs) -> dict:
    """One chat completion, recorded the way the rollout proxy records it."""
    resp = client.chat.completions.create(
        model="smollm2-135m", messages=messages, tools=[CALCULATOR], max_tokens=48,
        temperature=0, seed=7, logprobs=True, extra_body={"return_token_ids": True}, **kwargs)
    choice = resp.choices[0]
    output = choice.message.model_dump(exclude_none=True)
    return {"agent": "Calculator", "messages": messages, "tools": [CALCULATOR],
            "prompt_ids": resp.model_extra["prompt_token_ids"],
            "completion_ids": choice.model_extra["token_ids"],
            "logprobs": [t.logprob for t in choice.logprobs.content],
            "output": {k: output[k] for k in ("role", "content", "tool_calls") if k in output},
            "finish_reason": choice.finish_reason, "model": "smollm2-135m", "latency_ms": 1.0}


def react_rollout(client, rewrite=None) -> dict:
    """A ReAct trajectory: a tool call, the tool's result, the answer, a follow-up question.
    ``rewrite`` lets the 'agent' change the text of an answer before sending it back."""
    messages = list(FEW_SHOT)
    calls = [recorded_call(client, messages, tool_choice={
        "type": "function", "function": {"name": "calculator"}})]
    for follow_up in ("", "Thanks. And 3 + 5?"):
        output = dict(calls[-1]["output"])
        replies = [{"role": "tool", "tool_call_id": tool_call["id"], "content": "48"}
                   for tool_call in output.get("tool_calls") or []]
        if rewrite and output.get("content"):
            output["content"] = rewrite(output["content"])
        if follow_up:
            replies.append({"role": "user", "content": follow_up})
        messages = [*messages, output, *replies]
        calls.append(recorded_call(client, messages))
    return rollout_of(calls, id="real/0", task_id="real", group="real")


@pytest.fixture(scope="module")
def client(vllm_server):
    import openai

    return openai.OpenAI(base_url=vllm_server.base_url, api_key="EMPTY", max_retries=0)


def masked_text(tokenizer, sample) -> str:
    return tokenizer.decode([t for t, m in zip(sample["input_ids"], sample["loss_mask"],
                                               strict=True) if m])


@pytest.mark.vllm
def test_real_react_trajectory_merges_into_one_sample(client, tokenizer):
    rollout = react_rollout(client)
    calls = rollout["calls"]
    assert len(calls) == 3 and calls[0]["output"].get("tool_calls"), calls[0]["output"]
    assert calls[0]["completion_ids"][-1] == tokenizer.eos_token_id  # vLLM keeps <|im_end|>
    result, samples = invoke(["--tokenizer", "smollm2-135m"], jsonl(rollout))
    assert result.exit_code == 0, result.output
    stats_line = result.stderr.strip().splitlines()[-1]
    mismatches = sum(len(s["calls"]["mismatches"]) for s in samples)
    # one sample, or the mismatch kinds that prevented it, reported
    assert len(samples) == 1 + mismatches
    assert f"{mismatches} mismatches" in stats_line
    check_every_completion_once(samples, calls)
    if len(samples) == 1:
        (sample,) = samples
        assert sample["input_ids"] == calls[-1]["prompt_ids"] + calls[-1]["completion_ids"]
        assert "1 samples" in stats_line and "0 mismatches" in stats_line
    for sample in samples:
        trained = [calls[i] for i in sample["calls"]["indices"]]
        assert masked_text(tokenizer, sample) == "".join(
            tokenizer.decode(c["completion_ids"]) for c in trained)
        assert [lp for lp, m in zip(sample["logprobs"], sample["loss_mask"], strict=True)
                if m] == [lp for c in trained for lp in c["logprobs"]]
    # spliced, it is one sample whatever happened
    result, (sample,) = invoke(["--tokenizer", "smollm2-135m", "--on-mismatch", "splice"],
                               jsonl(rollout))
    assert sample["calls"]["indices"] == [0, 1, 2]


@pytest.mark.vllm
def test_a_trace_renders_the_prompt_the_server_renders_whatever_its_tools_key_order(client,
                                                                                   tokenizer):
    """A production trace keeps its tools as the agent wrote them (AgentScope: name,
    parameters, description); vLLM re-reads a request's tools and renders them name,
    description, parameters. The warm-up renders the trace (text mode) to the very prompt
    vLLM serves, token for token. Before, the tool schema ended '"}}' in training and '}}}'
    when served, and the demo's trained agent copied the served '}}}' into its calls."""
    from tracewheel.chat_template import encode, render

    agent_order = {"type": "function", "function": {
        "name": "execute_python_code",
        "parameters": {"properties": {"code": {"description": "The code.", "type": "string"}},
                       "required": ["code"], "type": "object"},
        "description": "Run Python code and return what it prints."}}
    messages = [{"role": "system", "content": "You are a careful math assistant."},
                {"role": "user", "content": "What is 6 times 7?"}]
    resp = client.chat.completions.create(
        model="smollm2-135m", messages=messages, tools=[agent_order], max_tokens=1,
        extra_body={"return_token_ids": True})
    served = resp.model_extra["prompt_token_ids"]
    assert encode(tokenizer, render(tokenizer, messages, [agent_order], CHAT_TEMPLATE.read_text(),
                                    True)) == served
    assert '"type": "object"}}}' in tokenizer.decode(served)  # description before parameters


@pytest.mark.vllm
def test_real_rewritten_answer_is_a_template_mismatch(client, tokenizer):
    """The agent sends its answer back with a newline appended (the same message text): the
    template renders other tokens than the model sampled. Reported as `template`; spliced, the
    sampled tokens stay in the sequence."""
    rollout = react_rollout(client, rewrite=lambda text: text + "\n")
    calls = rollout["calls"]
    assert calls[1]["output"]["content"] and calls[1]["finish_reason"] == "stop"
    result, samples = invoke(["--tokenizer", "smollm2-135m"], jsonl(rollout))
    assert [s["calls"]["indices"] for s in samples] == [[0, 1], [2]]
    (mismatch,) = samples[1]["calls"]["mismatches"]
    assert mismatch == {"call": 2, "with": 1, "kind": "template", "spliced": False,
                        "at": len(calls[1]["prompt_ids"]) + len(calls[1]["completion_ids"]) - 1}
    assert "2 samples, 0 failed, 1 mismatches (1 template)" in result.stderr
    result, (sample,) = invoke(["--tokenizer", "smollm2-135m", "--on-mismatch", "splice"],
                               jsonl(rollout))
    assert sample["calls"]["indices"] == [0, 1, 2]
    assert sample["calls"]["mismatches"][0]["spliced"] is True
    context = calls[1]["prompt_ids"] + calls[1]["completion_ids"]
    assert sample["input_ids"][:len(context)] == context  # what the model sampled
    assert tokenizer.decode(sample["input_ids"]).endswith(
        tokenizer.decode(calls[2]["prompt_ids"][-12:] + calls[2]["completion_ids"]))
    assert masked_text(tokenizer, sample) == "".join(
        tokenizer.decode(c["completion_ids"]) for c in calls)


FIXTURES = Path(__file__).parent / "fixtures" / "ctx_merge"


def test_recorded_react_rollout_gives_the_recorded_samples(tokenizer):
    """Real vLLM output recorded once (tests/fixtures/ctx_merge/README.md): a three-call ReAct
    trajectory merges into one sample, byte for byte the one recorded beside it."""
    rollout = (FIXTURES / "react_rollout.jsonl").read_text()
    expected = [json.loads(line) for line in
                (FIXTURES / "react_samples.jsonl").read_text().splitlines()]
    result, samples = invoke(["--tokenizer", "smollm2-135m", FIXTURES / "react_rollout.jsonl"])
    assert result.exit_code == 0, result.output
    assert samples == expected
    (sample,) = samples
    calls = json.loads(rollout)["calls"]
    assert sample["input_ids"] == calls[-1]["prompt_ids"] + calls[-1]["completion_ids"]
    assert masked_text(tokenizer, sample) == "".join(
        tokenizer.decode(c["completion_ids"]) for c in calls)
    assert "1 samples" in result.stderr and "2.74x fewer" in result.stderr


def test_a_rollout_without_calls_is_counted_with_its_reason():
    empty = rollout_of([], id="task-2/0")
    result, samples = invoke([], json.dumps(empty) + "\n")
    assert result.exit_code == 0, result.output
    assert samples == []
    assert "1 dropped (1 rollouts without calls)" in result.stderr
