"""Token in, token out: calls that continue an earlier call of their session are sent as token
ids, so ctx-merge merges every timeline exactly. The real path runs on the vLLM CPU server;
prompt building is also checked against the embedded tokenizer alone, and the parsing of
sampled text against vLLM's hermes convention."""

from __future__ import annotations

import json

import openai
import pytest
from canned import CannedServer, chat_completion
from click.testing import CliRunner

from tracewheel.chat_template import encode, render, server_tools, template_text
from tracewheel.errors import TracewheelError
from tracewheel_ctx_merge.merge import merge_rollout
from tracewheel_ctx_merge.sequences import MergeStats
from tracewheel_rollout.cli import main as rollout
from tracewheel_rollout.completions import ChoiceStream
from tracewheel_rollout.continuation import (
    SAMPLE_CONVERSATION,
    SAMPLE_TOOLS,
    Continuation,
    FinishedCall,
    parse_tool_calls,
    tools_key,
)
from tracewheel_rollout.recorder import Recorder

from conftest import ROOT, studio_tasks

EXAMPLE = ROOT / "examples" / "math_agent.py"
MODEL = "smollm2-135m"


def invoke(args, input_text=""):
    return CliRunner().invoke(rollout, [str(a) for a in args], input=input_text)


# --- prompts, with the embedded tokenizer alone --------------------------------------------

def _turn(tokenizer, template, messages, output_text, cut=False):
    """A finished call whose completion is exactly what the template renders for its output."""
    prompt = encode(tokenizer, render(tokenizer, messages, server_tools(SAMPLE_TOOLS), template,
                                      True))
    completion = encode(tokenizer, output_text + ("" if cut else "<|im_end|>"))
    return FinishedCall("call-1", messages, tools_key(server_tools(SAMPLE_TOOLS)),
                {"role": "assistant", "content": output_text}, prompt, completion)


@pytest.mark.parametrize("cut", [False, True], ids=["stopped", "cut"])
def test_a_continued_prompt_is_the_earlier_context_then_the_new_turns(tokenizer, cut):
    template = template_text(None)
    cont = Continuation(tokenizer, template, 4096)
    first = SAMPLE_CONVERSATION[:2]
    turn = _turn(tokenizer, template, first, "Let me think.", cut=cut)
    cont.add("s", None, turn)
    later = [*first, {"role": "assistant", "content": "Let me think."},
             {"role": "user", "content": "Go on."}]
    plan = cont.plan("s", None, {"messages": later, "tools": SAMPLE_TOOLS})
    context = list(turn.prompt_ids) + list(turn.completion_ids)
    assert plan.continues == "call-1" and plan.prompt_ids[:len(context)] == context
    # Where the sampled tokens are what the template renders, the continued prompt is the
    # rendered one: nothing added, nothing lost (a cut completion gets its end-of-turn token).
    rendered = encode(tokenizer, render(tokenizer, later, server_tools(SAMPLE_TOOLS), template,
                                        True))
    assert plan.prompt_ids == rendered and plan.drift == 0


def test_the_sampled_tokens_stay_where_the_agent_rewrote_its_turn(tokenizer):
    template = template_text(None)
    cont = Continuation(tokenizer, template, 4096)
    turn = _turn(tokenizer, template, SAMPLE_CONVERSATION[:2], "  I will compute it.  ")
    cont.add("s", "Solver", turn)
    later = [*SAMPLE_CONVERSATION[:2], {"role": "assistant", "content": "I will compute it."},
             {"role": "user", "content": "Go on."}]
    plan = cont.plan("s", "Solver", {"messages": later, "tools": SAMPLE_TOOLS})
    context = list(turn.prompt_ids) + list(turn.completion_ids)
    assert plan.prompt_ids[:len(context)] == context and plan.drift > 0
    # Another agent of the session, or another tool list, continues nothing.
    assert cont.plan("s", "Checker", {"messages": later, "tools": SAMPLE_TOOLS}).prompt_ids is None
    assert cont.plan("s", "Solver", {"messages": later}).prompt_ids is None
    # What only the chat API does goes there, and says why.
    guided = cont.plan("s", "Solver", {"messages": later, "tools": SAMPLE_TOOLS,
                                       "tool_choice": "required"})
    assert guided.prompt_ids is None and "tool_choice" in guided.reason
    cont.forget("s")
    assert cont.plan("s", "Solver", {"messages": later, "tools": SAMPLE_TOOLS}).prompt_ids is None


def test_sampled_text_is_parsed_as_vllm_hermes_parser_reads_it():
    content, calls = parse_tool_calls(
        'Let me run it.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>')
    assert content == "Let me run it.\n"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] \
        == [("f", {"x": 1})]
    assert parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}')[0] is None  # unclosed
    # Text that does not parse is a plain reply, whole, as vLLM gives it.
    broken = 'Sure <tool_call>{"name": "f", "arguments": {"x": </tool_call>'
    assert parse_tool_calls(broken) == (broken, [])
    assert parse_tool_calls("no calls here") == ("no calls here", [])


def _stream(pieces, tools=True):
    stream = ChoiceStream(0, tools)
    out = []
    for i, text in enumerate(pieces):
        last = i == len(pieces) - 1
        out += stream.add({"index": 0, "text": text, "token_ids": [i],
                           "finish_reason": "stop" if last else None}, False, False)
    return stream, out


def test_a_stream_sends_text_as_it_comes_and_holds_back_what_may_be_a_tool_call():
    stream, out = _stream(["Hi <to", "ol_call>\n", '{"name": "f", "arguments": {}}',
                           "\n</tool_call>"])
    content = "".join(c["delta"].get("content") or "" for c in out)
    assert content == "Hi "
    calls = [t for c in out for t in c["delta"].get("tool_calls") or []]
    assert [t["function"]["name"] for t in calls] == ["f"] and calls[0]["index"] == 0
    assert out[-1]["finish_reason"] == "tool_calls" and stream.token_ids == [0, 1, 2, 3]
    # Held back, then not a tool call after all: sent on as text, nothing lost.
    _, out = _stream(["a <to", "ast>"])
    assert "".join(c["delta"].get("content") or "" for c in out) == "a <toast>"
    broken = ["x <tool_call>", "{oops"]
    _, out = _stream(broken)
    assert "".join(c["delta"].get("content") or "" for c in out) == "".join(broken)
    assert out[-1]["finish_reason"] == "stop"


# --- where it cannot work --------------------------------------------------------------------

def test_an_upstream_that_is_not_vllm_is_rendered_and_the_user_is_told_why():
    with CannedServer(lambda n: (200, {}, chat_completion("4", token_ids=True))) as up:
        with pytest.raises(TracewheelError, match="does not say it is vLLM"):
            Recorder(up.base_url, on_call=lambda c: None, continuation="on").start()
        result = invoke(["--base-url", up.base_url, "--model", "m", "-w",
                         f"{ROOT / 'tests' / 'fixtures' / 'rollout' / 'workflows.py'}:one_call"],
                        '{"id": "t", "query": "2 + 2?"}\n')
    assert result.exit_code == 0, result.output
    assert "not continued as token ids: the upstream" in result.stderr
    assert json.loads(result.stdout)["calls"][0]["tokens"] == "rendered"


def test_check_template_finds_where_a_template_rewrites_earlier_turns(tmp_path):
    result = invoke(["check-template"])
    assert result.exit_code == 0 and "append-only" in result.stderr
    dropping = tmp_path / "drop.jinja"
    dropping.write_text(
        "{%- for m in messages -%}{%- if m.role == 'assistant' and not loop.last -%}"
        "<|im_start|>assistant\n(earlier)<|im_end|>\n{% else -%}<|im_start|>{{ m.role }}\n"
        "{{ m.content or '' }}<|im_end|>\n{% endif -%}{%- endfor -%}")
    result = invoke(["check-template", "--chat-template", dropping])
    assert result.exit_code == 1
    assert "message 3 (tool) changes the rendering of the turns before it" in result.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "r", "calls": []}\nnot json\n')
    result = invoke(["check-template", bad])
    assert result.exit_code == 1 and "bad.jsonl:2" in result.output


# --- the real thing: vLLM ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tool_first(vllm_server):
    result = invoke(["-w", f"{EXAMPLE}:run_tool_first", "-n", "2", "--seed", "5",
                     "--max-tokens", "96", "--reward", "boxed", "-j", "8",
                     "--base-url", vllm_server.base_url, "--model", MODEL], studio_tasks(8))
    assert result.exit_code == 0, result.output
    return result, [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.vllm
def test_tool_calling_rollouts_merge_into_one_exact_sample_per_timeline(tool_first):
    result, records = tool_first
    assert len(records) == 16 and all(r["status"] == "ok" for r in records), result.stderr
    several = [r for r in records if len(r["calls"]) >= 2]
    assert len(several) > len(records) / 2, "most rollouts should make several calls"
    continued = [c for r in records for c in r["calls"] if c["tokens"] == "continued"]
    assert len(continued) >= len(several)
    stats = MergeStats()
    for record in records:
        samples = merge_rollout(record, stats=stats)
        # A timeline: one agent with one tool list (an agent's last call may drop its tools).
        timelines = {(c["agent"], json.dumps(c["tools"], sort_keys=True))
                     for c in record["calls"]}
        assert len(samples) == len(timelines), record["id"]
        last = record["calls"][-1]
        assert samples[-1]["input_ids"] == last["prompt_ids"] + last["completion_ids"]
    assert sum(stats.mismatches.values()) == 0
    print(f"{len(records)} rollouts, {stats.calls} calls, {len(continued)} continued, "
          f"drift avoided {sum(c['drift'] for c in continued)} tokens; "
          f"{stats.tokens_separate / stats.tokens_merged:.2f}x fewer tokens merged")


@pytest.mark.vllm
def test_continued_calls_answer_the_agent_as_the_chat_api_would(vllm_server):
    """Where the continued prompt is the rendered one, the agent gets the same reply, token for
    token, from the recorder as from vLLM's chat API: streaming or not."""
    calls: list[dict] = []
    direct = openai.OpenAI(base_url=vllm_server.base_url, api_key="EMPTY", max_retries=0)
    with Recorder(vllm_server.base_url, on_call=calls.append, continuation="on") as recorder:
        client = openai.OpenAI(base_url=recorder.base_url("eq"), api_key="EMPTY",
                               max_retries=0)
        first = [*SAMPLE_CONVERSATION[:7], {"role": "user", "content": "Now 12 * 12."}]
        reply = client.chat.completions.create(model=MODEL, messages=first, max_tokens=24,
                                               seed=1, tools=SAMPLE_TOOLS)
        output = reply.choices[0].message
        later = [*first, {"role": "assistant", "content": output.content},
                 {"role": "user", "content": "And 5 * 5? Use the tool."}]
        for seed in range(3):
            kw = dict(model=MODEL, messages=later, max_tokens=48, seed=seed, tools=SAMPLE_TOOLS,
                      logprobs=True, extra_body={"return_token_ids": True})
            want = direct.chat.completions.create(**kw).choices[0]
            got = client.chat.completions.create(**kw).choices[0]
            assert calls[-1]["tokens"] == "continued" and calls[-1]["drift"] == 0
            assert got.model_extra["token_ids"] == want.model_extra["token_ids"]
            assert got.message.content == want.message.content
            assert got.finish_reason == want.finish_reason
            assert [t.token for t in got.logprobs.content] == \
                [t.token for t in want.logprobs.content]
            assert calls[-1]["completion_ids"] == want.model_extra["token_ids"]
            text, ids, finish = "", [], None
            for chunk in client.chat.completions.create(stream=True, **kw):
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    ids += (choice.model_extra or {}).get("token_ids") or []
                    finish = choice.finish_reason or finish
            assert (text, ids, finish) == (want.message.content or "",
                                           want.model_extra["token_ids"], want.finish_reason)
            assert calls[-1]["stream"] and calls[-1]["tokens"] == "continued"


@pytest.mark.vllm
def test_bad_continuing_requests_are_answered_as_vllm_would_and_recorded(vllm_server):
    calls: list[dict] = []
    with Recorder(vllm_server.base_url, on_call=calls.append) as recorder:
        client = openai.OpenAI(base_url=recorder.base_url("bad"), api_key="EMPTY",
                               max_retries=0)
        first = SAMPLE_CONVERSATION[:2]
        reply = client.chat.completions.create(model=MODEL, messages=first, max_tokens=8,
                                               seed=0)
        said = {"role": "assistant", "content": reply.choices[0].message.content}
        # A new message the template cannot render goes to vLLM, which refuses it.
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, max_tokens=8, messages=[
                *first, said, {"role": "user", "content": 5}])
        assert calls[-1]["status"] == "error" and calls[-1]["tokens"] == "rendered"
        assert "cannot render" in calls[-1]["tokens_reason"]
        # A session the recorder never saw continues nothing: rendered, answered, recorded.
        other = openai.OpenAI(base_url=recorder.base_url("never-seen"), api_key="EMPTY",
                              max_retries=0)
        other.chat.completions.create(model=MODEL, max_tokens=8, messages=[
            *first, said, {"role": "user", "content": "Go on."}])
        assert calls[-1]["session"] == "never-seen" and calls[-1]["status"] == "ok"
        assert calls[-1]["tokens"] == "rendered" and calls[-1]["tokens_reason"] is None
