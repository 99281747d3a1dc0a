"""rollout: the recording endpoint and the workflow runner against canned upstreams (faults,
the workflow contract), and the example ReActAgent through the real vLLM CPU server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from canned import CannedServer, chat_completion
from click.testing import CliRunner

from tracewheel.chat_template import CHAT_TEMPLATE
from tracewheel.errors import TracewheelError
from tracewheel_rollout.cli import main as rollout
from tracewheel_rollout.recorder import Recorder, split_path

from conftest import ROOT, free_port, studio_tasks

WORKFLOWS = Path(__file__).resolve().parent / "fixtures" / "rollout" / "workflows.py"
EXAMPLE = ROOT / "examples" / "math_agent.py"


def wf(name: str) -> str:
    return f"{WORKFLOWS}:{name}"


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def tasks(n: int, **extra) -> str:
    return jsonl(*({"id": f"t{i}", "query": f"What is {i} + {i}?", **extra} for i in range(n)))


def run(args, input_text="", ok=True):
    result = CliRunner().invoke(rollout, [str(a) for a in args], input=input_text)
    if ok:
        assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, records


def canned(content="4", **kw):
    return CannedServer(lambda n: (200, {}, chat_completion(content, token_ids=True, **kw)))


def base(server, *more):
    return ["--base-url", server.base_url, "--model", "m", *more]


# --- the recording endpoint --------------------------------------------------------------------

def test_session_and_agent_come_from_the_path():
    assert split_path("/v1/chat/completions") == ("default", None, "/v1/chat/completions")
    assert split_path("/s/abc/v1/models") == ("abc", None, "/v1/models")
    assert split_path("/s/abc/agent/Checker/v1/chat/completions") == (
        "abc", "Checker", "/v1/chat/completions")


def test_recorder_asks_for_ids_and_gives_the_agent_an_ordinary_reply():
    calls = []
    with canned("hello") as up, Recorder(up.base_url, on_call=calls.append) as rec:
        client = openai.OpenAI(base_url=rec.base_url("s1", "Solver"), api_key="k",
                               max_retries=0)
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], temperature=0.3,
            max_tokens=5)
        sent = up.requests[0]["body"]
    assert sent["logprobs"] is True and sent["return_token_ids"] is True
    assert reply.choices[0].message.content == "hello"
    assert reply.choices[0].logprobs is None  # not asked for: not given
    assert (reply.model_extra or {}).get("prompt_token_ids") is None
    (call,) = calls
    assert call["session"] == "s1" and call["agent"] == "Solver" and call["status"] == "ok"
    assert call["completion_ids"] == [ord(c) for c in "hello"]
    assert call["logprobs"] == [-0.5] * 5 and call["prompt_ids"] == [1, 2, 3]
    assert call["params"] == {"temperature": 0.3, "max_tokens": 5}
    assert call["output"] == {"role": "assistant", "content": "hello"}


def test_each_agent_is_sent_to_its_policy_and_the_call_says_which():
    calls = []
    with canned("hi") as up, Recorder(up.base_url, on_call=calls.append,
                                      policies={"Solver": "solver", "Checker": "checker"},
                                      policy_versions={"solver": "/a/solver"}) as rec:
        for agent in ("Solver", "Checker"):
            client = openai.OpenAI(base_url=rec.base_url("s1", agent), api_key="k",
                                   max_retries=0)
            client.chat.completions.create(model="base", messages=[
                {"role": "user", "content": "x"}])
        # an agent outside the map, with no default policy: its call fails, loudly
        client = openai.OpenAI(base_url=rec.base_url("s1", "Critic"), api_key="k",
                               max_retries=0)
        with pytest.raises(openai.BadRequestError, match="agent 'Critic' is not in the policy "
                                                         "map \\(it names Checker, Solver\\)"):
            client.chat.completions.create(model="base", messages=[
                {"role": "user", "content": "x"}])
        sent = [r["body"]["model"] for r in up.requests]
    assert sent == ["solver", "checker"]
    assert [(c["agent"], c.get("policy"), c.get("policy_version"), c["status"])
            for c in calls] == [("Solver", "solver", "/a/solver", "ok"),
                                ("Checker", "checker", None, "ok"),
                                ("Critic", None, None, "error")]

    calls.clear()
    with canned("hi") as up, Recorder(up.base_url, on_call=calls.append,
                                      policies={"Solver": "solver"},
                                      default_policy="base") as rec:
        client = openai.OpenAI(base_url=rec.base_url("s1", "Critic"), api_key="k",
                               max_retries=0)
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "x"}])
        assert up.requests[0]["body"]["model"] == "base"
    assert calls[0]["policy"] == "base"


def test_a_policy_map_is_read_once_and_bad_entries_are_named():
    from tracewheel.policies import parse_policy_map

    assert parse_policy_map(["Solver=solver,Checker=checker", " Critic = critic "]) == {
        "Solver": "solver", "Checker": "checker", "Critic": "critic"}
    assert parse_policy_map([]) == {}
    for bad, message in ((["Solver"], "'Solver': not AGENT=POLICY"),
                         (["Solver="], "'Solver=': not AGENT=POLICY"),
                         (["A=a,A=b"], "agent 'A' is given two policies"),
                         ([","], "names no agent")):
        with pytest.raises(TracewheelError, match=message):
            parse_policy_map(bad)


def test_an_agent_that_asks_for_logprobs_gets_them():
    with canned("yo") as up, Recorder(up.base_url, on_call=lambda c: None) as rec:
        client = openai.OpenAI(base_url=rec.base_url(), api_key="k", max_retries=0)
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], logprobs=True)
    assert [t.logprob for t in reply.choices[0].logprobs.content] == [-0.5, -0.5]


def test_recorder_retries_transient_upstream_failures():
    script = [(503, {}, {"error": "busy"}), (429, {}, {"error": "slow"}),
              (200, {}, chat_completion("ok", token_ids=True))]
    calls = []
    with CannedServer(lambda n: script[n]) as up, \
            Recorder(up.base_url, on_call=calls.append, retries=3) as rec:
        client = openai.OpenAI(base_url=rec.base_url(), api_key="k", max_retries=0)
        reply = client.chat.completions.create(model="m",
                                               messages=[{"role": "user", "content": "x"}])
        assert len(up.requests) == 3
    assert reply.choices[0].message.content == "ok" and calls[0]["status"] == "ok"
    assert calls[0]["upstream_retries"] == ["HTTP 503", "HTTP 429"]


def test_a_request_the_upstream_never_answers_is_asked_again_and_says_so():
    """The first request gets no reply (a request lost between the recorder and the engine):
    after --timeout it is asked again, and the rollout's call says why it took that long,
    the run warns, and its summary counts the retry by cause. Before, such a call was ok
    with nothing but its latency to tell."""
    up = CannedServer(lambda n: (200, {}, chat_completion("4", token_ids=True)),
                      delay=lambda n: 2.0 if n == 0 else 0)
    with up:
        result, records = run(["-w", wf("one_call"), "--timeout", "0.5", *base(up)], tasks(1))
        assert len(up.requests) == 2
    call = records[0]["calls"][0]
    assert records[0]["status"] == "ok" and call["upstream_retries"] == ["no reply in 0.5 s"]
    assert call["latency_ms"] >= 500
    assert f"upstream {up.base_url.removesuffix('/v1')} sent no reply in 0.5 s; asking again" \
        in result.stderr
    assert "1 upstream retries (1 no reply in 0.5 s)" in result.stderr


def test_a_refused_request_reaches_the_agent_and_is_recorded_as_failed():
    calls = []
    with CannedServer(lambda n: (400, {}, {"error": {"message": "bad"}})) as up, \
            Recorder(up.base_url, on_call=calls.append) as rec:
        client = openai.OpenAI(base_url=rec.base_url(), api_key="k", max_retries=0)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert len(up.requests) == 1  # a 400 is not retried
    assert calls[0]["status"] == "error" and "HTTP 400" in calls[0]["error"]


def test_an_upstream_200_that_is_not_a_json_object_is_retried_then_recorded_as_failed():
    """An HTML page from a proxy, or a JSON list, with status 200: retried as a 5xx is; when
    retries are spent the agent gets a JSON 502 and the call is recorded as failed."""
    html = (200, {"content-type": "text/html"}, "<html><body>Bad gateway</body></html>")
    script = [html, (200, {}, "[1, 2]"), (200, {}, chat_completion("ok", token_ids=True))]
    calls = []
    with CannedServer(lambda n: script[n]) as up, \
            Recorder(up.base_url, on_call=calls.append, retries=3) as rec:
        client = openai.OpenAI(base_url=rec.base_url(), api_key="k", max_retries=0)
        reply = client.chat.completions.create(model="m",
                                               messages=[{"role": "user", "content": "x"}])
        assert len(up.requests) == 3
    assert reply.choices[0].message.content == "ok" and calls[0]["status"] == "ok"
    assert calls[0]["upstream_retries"] == ["HTTP 200 not a JSON object"] * 2

    calls.clear()
    with CannedServer(lambda n: html) as up, \
            Recorder(up.base_url, on_call=calls.append, retries=1) as rec:
        client = openai.OpenAI(base_url=rec.base_url(), api_key="k", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert len(up.requests) == 2
    assert caught.value.status_code == 502 and "not a JSON object" in str(caught.value)
    assert calls[0]["status"] == "error" and "not a JSON object" in calls[0]["error"]


@pytest.mark.parametrize("upstream_key", ["sk-upstream-secret-1", None])
def test_a_key_the_upstream_echoes_is_in_no_record_and_no_reply(upstream_key):
    """OpenAI's 401 repeats the key it got. Neither the recorder's upstream key nor the
    agent's own reaches the calls file or the reply the agent gets."""
    sent = upstream_key or "sk-client-secret-2"
    echo = {"error": {"message": f"Incorrect API key provided: Bearer {sent}."}}
    calls = []
    with CannedServer(lambda n: (401, {}, echo)) as up, \
            Recorder(up.base_url, on_call=calls.append, api_key=upstream_key) as rec:
        client = openai.OpenAI(base_url=rec.base_url(), api_key="sk-client-secret-2",
                               max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert up.requests[0]["headers"]["Authorization"] == f"Bearer {sent}"
    assert "Incorrect API key provided" in calls[0]["error"]
    for text in (calls[0]["error"], str(caught.value), json.dumps(caught.value.body)):
        assert sent not in text and "***" in text


def test_an_upstream_without_token_ids_is_named_in_the_record():
    calls = []
    with CannedServer(lambda n: (200, {}, chat_completion("no ids"))) as up, \
            Recorder(up.base_url, on_call=calls.append) as rec:
        openai.OpenAI(base_url=rec.base_url(), api_key="k", max_retries=0).chat.completions \
            .create(model="m", messages=[{"role": "user", "content": "x"}])
    assert calls[0]["status"] == "error" and "return_token_ids" in calls[0]["error"]


def test_recorder_binds_loopback_by_default_and_keeps_the_upstream_key():
    with canned() as up, Recorder(up.base_url, on_call=lambda c: None,
                                  api_key="sk-upstream-secret") as rec:
        assert rec.host == "127.0.0.1"
        openai.OpenAI(base_url=rec.base_url(), api_key="client-key", max_retries=0) \
            .chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert up.requests[0]["headers"]["Authorization"] == "Bearer sk-upstream-secret"


# --- the runner --------------------------------------------------------------------------------

def test_each_task_runs_n_times_in_order_with_its_calls():
    with canned("8") as up:
        result, records = run(["-w", wf("one_call"), "-n", "3", *base(up)], tasks(2))
    assert [r["id"] for r in records] == ["t0/0", "t0/1", "t0/2", "t1/0", "t1/1", "t1/2"]
    assert all(r["group"] == r["task_id"] for r in records)
    assert all(r["status"] == "ok" and r["final"] == "8" for r in records)
    assert all(len(r["calls"]) == 1 for r in records)
    call = records[0]["calls"][0]
    assert call["messages"] == [{"role": "user", "content": "What is 0 + 0?"}]
    assert call["completion_ids"] == [ord("8")] and call["logprobs"] == [-0.5]
    assert "2 read, 6 rollouts, 6 ok" in result.stderr


def test_every_rollout_record_is_valid():
    from tracewheel.records import validate_rollout

    with canned() as up:
        _, records = run(["-w", wf("two_agents"), *base(up)], tasks(2))
    for record in records:
        validate_rollout(record)
    assert [c["agent"] for c in records[0]["calls"]] == ["Solver", "Checker"]


def test_agentscope_models_from_the_handle_are_recorded_streaming_or_not():
    with canned("twelve") as up:
        _, plain = run(["-w", wf("agentscope_call"), *base(up)], tasks(1))
        _, streamed = run(["-w", wf("agentscope_stream"), *base(up)], tasks(1))
    assert plain[0]["final"] == "twelve" and plain[0]["calls"][0]["stream"] is False
    assert plain[0]["calls"][0]["params"]["temperature"] == 1.0


def test_the_models_a_handle_made_are_closed_on_the_workflows_loop():
    """Left to the garbage collector, an AgentScope model's HTTP client closes after its event
    loop has (a traceback each, after a run that went well): the rollout closes them."""
    from tracewheel.workflow import Handle, call_workflow

    made = []

    async def workflow(task, handle):
        made.append(handle.chat_model())
        made.append(handle.chat_model(agent="Checker"))
        return "done"

    handle = Handle(root="http://127.0.0.1:9", session="s", model_name="m")
    result = asyncio.run(call_workflow(workflow, {"id": "t"}, handle))
    assert result.answer == "done" and len(made) == 2
    assert all(model.client.is_closed() for model in made)


def test_workflow_rewards_results_and_reward_functions():
    with canned("abc") as up:
        _, own = run(["-w", wf("scored"), *base(up)], tasks(1))
        _, as_dict = run(["-w", wf("scored_dict"), *base(up)], tasks(1))
        _, fn = run(["-w", wf("one_call"), "--reward", wf("length_reward"), *base(up)],
                    tasks(1))
    assert own[0]["reward"] == 0.25 and own[0]["metadata"] == {"note": "scored itself"}
    assert as_dict[0]["reward"] == 1 and as_dict[0]["final"] == "abc"
    assert fn[0]["reward"] == 3.0 and fn[0]["reward_info"]["measured"] == "characters"


def test_boxed_reward_compares_with_the_reference():
    with canned("so \\boxed{7,006,652}") as up:
        result, records = run(["-w", wf("one_call"), "--reward", "boxed", "-n", "2", *base(up)],
                              jsonl({"id": "a", "query": "q", "reference": "7006652"},
                                    {"id": "b", "query": "q", "reference": "12"},
                                    {"id": "c", "query": "q"}))
    assert [r["reward"] for r in records] == [1.0, 1.0, 0.0, 0.0, None, None]
    assert records[4]["reward_info"]["reason"] == "the task has no reference"
    assert "2 of 2 groups with equal rewards" in result.stderr
    assert "2 without a reward" in result.stderr


def test_top_up_draws_more_for_tied_groups_until_the_tie_breaks_or_the_cap():
    with canned() as up:
        result, records = run(["-w", wf("right_from_sample"), "-n", "2", "--top-up", "4",
                               "--seed", "1", *base(up)],
                              jsonl(*({"id": q, "query": q} for q in ("never", "late", "mixed"))))
    drawn = {q: [r["sample"] for r in records if r["task_id"] == q]
             for q in ("never", "late", "mixed")}
    # "mixed" has its signal at once; "late" breaks its tie in the second round (samples 4,
    # 5); "never" draws the whole cap: 2 + 4
    assert drawn == {"never": list(range(6)), "late": list(range(6)), "mixed": [0, 1]}
    assert len({r["id"] for r in records}) == 14
    assert "topped up 2 tied groups, 1 of them broke the tie" in result.stderr
    assert "1 of 3 groups with equal rewards" in result.stderr
    # without the option, the same tasks draw per-task rollouts each
    with canned() as up:
        _, plain = run(["-w", wf("right_from_sample"), "-n", "2", *base(up)],
                       jsonl({"id": "never", "query": "never"}))
    assert [r["sample"] for r in plain] == [0, 1]


def test_failures_and_timeouts_are_written_not_dropped():
    with canned() as up:
        result, failed = run(["-w", wf("fails"), *base(up)], tasks(1))
        _, slow = run(["-w", wf("slow"), "--rollout-timeout", "0.5", *base(up)], tasks(1))
    assert failed[0]["status"] == "error"
    assert failed[0]["error"].startswith("ValueError: the agent gave up (at ")
    assert len(failed[0]["calls"]) == 1  # what it did before failing is kept
    assert "t0/0: error: ValueError" in result.stderr
    assert slow[0]["status"] == "timeout" and "0.5 s" in slow[0]["error"]
    # ... and where the workflow was waiting, innermost first
    assert re.search(r"waiting at \S*asyncio/tasks\.py:\d+ sleep < \S*workflows\.py:\d+ slow",
                     slow[0]["error"]), slow[0]["error"]


def test_a_rollout_that_times_out_in_a_model_call_says_it_waited_in_the_http_client():
    """The agent's call gets no reply: the timeout's error names the HTTP client's frames, so
    a hang tells where it is (the model call, not a tool or a lock) without a debugger."""
    up = CannedServer(lambda n: (200, {}, chat_completion("4", token_ids=True)),
                      delay=lambda n: 30.0)
    with up:
        _, records = run(["-w", wf("agentscope_call"), "--rollout-timeout", "3", *base(up)],
                         tasks(1))
    error = records[0]["error"]
    assert records[0]["status"] == "timeout"
    # e.g. "asyncio/locks.py:213 wait < anyio/...:1431 receive < httpcore/...:35 read < ..."
    assert re.search(r"the workflow was waiting at [^<]+ < \S*(httpcore|anyio)/", error), error


def test_concurrency_keeps_output_order_and_unordered_writes_everything():
    with canned() as up:
        started = time.monotonic()
        _, ordered = run(["-w", wf("sleepy_sync"), "-j", "8", *base(up)], tasks(8))
        elapsed = time.monotonic() - started
        _, unordered = run(["-w", wf("sleepy_sync"), "-j", "4", "--unordered", *base(up)],
                           tasks(8))
    assert [r["task_id"] for r in ordered] == [f"t{i}" for i in range(8)]
    assert sorted(r["task_id"] for r in unordered) == [f"t{i}" for i in range(8)]
    assert elapsed < 8 * 0.2 + 5  # not one after another (generous: a shared machine)


def test_one_slow_rollout_holds_one_slot_not_the_run(tmp_path, monkeypatch):
    """t0 ends only when all 12 tasks have started; with -j 3 that needs the finished ones
    behind it to free their slots while it runs. Before: the run waited on t0 with two idle
    slots until the rollout timeout."""
    monkeypatch.setenv("ROLLOUT_TEST_DIR", str(tmp_path))
    monkeypatch.setenv("ROLLOUT_TEST_TASKS", "12")
    with canned() as up:
        _, records = run(["-w", wf("waits_for_the_others"), "-j", "3", "--rollout-timeout", "20",
                          *base(up)], tasks(12))
    assert [r["task_id"] for r in records] == [f"t{i}" for i in range(12)]  # still in order
    assert all(r["status"] == "ok" for r in records), records[0]["error"]


def test_seed_gives_each_rollout_a_fixed_seed():
    with canned() as up:
        run(["-w", wf("one_call"), "-n", "2", "--seed", "7", *base(up)], tasks(1))
        run(["-w", wf("one_call"), "-n", "2", "--seed", "7", *base(up)], tasks(1))
        seeds = [r["body"]["seed"] for r in up.requests]
    assert set(seeds[:2]) == set(seeds[2:]) and len(set(seeds)) == 2  # (requests race)


def test_a_broken_workflow_is_reported_before_anything_starts(tmp_path):
    result, _ = run(["-w", f"{tmp_path}/nope.py:run"], tasks(1), ok=False)
    assert result.exit_code == 1 and "no such file" in result.output
    result, _ = run(["-w", f"{WORKFLOWS}:missing"], tasks(1), ok=False)
    assert result.exit_code == 1 and "has no missing" in result.output
    result, _ = run(["-w", "no_colon"], tasks(1), ok=False)
    assert "expected FILE.py:FUNCTION or MODULE:FUNCTION" in result.output


def test_incompatible_options_are_usage_errors():
    result, _ = run(["-w", wf("one_call"), "--serve", "x", "--base-url", "http://h/v1"],
                    ok=False)
    assert result.exit_code == 2 and "--serve and --base-url" in result.output
    result, _ = run(["-w", wf("one_call"), "--rubrics", "be strict"], ok=False)
    assert result.exit_code == 2 and "--reward judge" in result.output
    result, _ = run(["-w", wf("one_call"), "--top-up", "4"], ok=False)
    assert result.exit_code == 2 and "--top-up needs --per-task 2 or more" in result.output


def test_empty_input_starts_nothing(monkeypatch):
    monkeypatch.setenv("TRACEWHEEL_VLLM_PYTHON", "/nonexistent/python")
    result, records = run(["-w", wf("one_call")], "")
    assert records == [] and "serving" not in result.output


def test_prints_of_the_workflow_do_not_reach_the_records(tmp_path):
    """A real process: agents and libraries print to stdout; only records may go there."""
    with canned("4") as up:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "rollout"), "-w", wf("chatty"), *base(up)],
            input=tasks(2), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["id"] for line in proc.stdout.splitlines()] == ["t0/0", "t1/0"]
    assert proc.stderr.count("hello from the workflow") == 2


def test_rollout_record_writes_calls_until_stopped():
    with canned("hi there") as up:
        port = free_port()
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "rollout"), "record", "--upstream", up.base_url,
             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert "recording at" in proc.stderr.readline()
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/s/x/v1", api_key="k",
                                   max_retries=0)
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
            list(client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "b"}], stream=False)
                 .choices)
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=30)
    calls = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0, err
    assert [c["session"] for c in calls] == ["x", "x"]
    assert "rollout record: 2 calls, 0 failed" in err


@pytest.mark.parametrize("answer", [[1, 2], "<html>busy</html>", {"weight_version": [3]}],
                         ids=["json-list", "html", "version-a-list"])
def test_rollout_record_in_front_of_an_odd_version_probe_records_without_versions(answer):
    """An upstream whose /weight_info answers 200 with something else than a version: the
    recorder warns and records as usual, each call without a version (it failed to start,
    with an internal AttributeError, before)."""
    def get(path: str):
        return (200, {}, answer) if path == "/weight_info" else (404, {}, {})

    with CannedServer(lambda n: (200, {}, chat_completion("hi", token_ids=True)),
                      get=get) as up:
        port = free_port()
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "rollout"), "record", "--upstream", up.base_url,
             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            warning = proc.stderr.readline()
            assert "recording at" in proc.stderr.readline()
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/s/x/v1", api_key="k",
                                   max_retries=0)
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert warning.startswith("rollout record: WARNING: ") and "/weight_info answered" in warning
    assert "recorded without weight versions" in warning
    assert "Error" not in warning and "AttributeError" not in warning + err
    (call,) = [json.loads(line) for line in out.splitlines()]
    assert call["status"] == "ok" and call.get("weight_version") is None


@pytest.mark.parametrize(
    "signals", [[signal.SIGINT], [signal.SIGTERM, signal.SIGINT, signal.SIGINT]],
    ids=["ctrl-c", "sigterm-then-ctrl-c-twice"])
def test_rollout_record_stops_on_ctrl_c_with_a_request_in_flight(signals):
    """The upstream holds the request for 60 s; Ctrl-C (or SIGTERM, and more signals while it
    stops) ends the recorder at once, with the calls it finished written and the summary
    printed (before: aiohttp waited up to 60 s for the handler)."""
    replies = [(200, {}, chat_completion("done", token_ids=True))]
    with CannedServer(lambda n: replies[0], lambda n: 0 if n == 0 else 60) as up:
        port = free_port()
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "rollout"), "record", "--upstream", up.base_url,
             "--port", str(port), "--retries", "0"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            assert "recording at" in proc.stderr.readline()
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/s/x/v1", api_key="k",
                                   max_retries=0, timeout=120)
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
            def ask() -> None:
                with contextlib.suppress(openai.APIError):
                    client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "b"}])

            hung = threading.Thread(target=ask, daemon=True)
            hung.start()
            deadline = time.monotonic() + 30
            while len(up.requests) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            for sig in signals:
                proc.send_signal(sig)
                time.sleep(0.2)
            out, err = proc.communicate(timeout=30)  # the upstream would take 60 s
        finally:
            if proc.poll() is None:
                proc.kill()
    calls = [json.loads(line) for line in out.splitlines()]
    assert [c["status"] for c in calls] == ["ok"], err
    assert "Traceback" not in err
    assert "rollout record: 1 calls" in err


# --- the real thing ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def react_rollouts(vllm_server, tmp_path_factory):
    result, records = run(["-w", f"{EXAMPLE}:run_tool_first", "-n", "2", "--seed", "3",
                           "--max-tokens", "96", "--reward", "boxed", "-j", "4",
                           "--continuation", "off",
                           "--base-url", vllm_server.base_url, "--model", "smollm2-135m"],
                          studio_tasks(2))
    return result, records


@pytest.mark.vllm
def test_example_agent_calls_carry_ids_that_decode_to_what_was_recorded(react_rollouts,
                                                                        tokenizer):
    result, records = react_rollouts
    assert len(records) == 4 and all(r["status"] == "ok" for r in records), result.stderr
    assert all(r["reward"] in (0.0, 1.0) for r in records)
    template = CHAT_TEMPLATE.read_text()
    calls = [c for r in records for c in r["calls"]]
    assert any(c["output"].get("tool_calls") for c in calls)  # the tool was called
    for call in calls:
        assert len(call["logprobs"]) == len(call["completion_ids"]) > 0
        assert all(lp <= 0.0 for lp in call["logprobs"])
        # The prompt ids are the recorded messages and tools, rendered by the template (vLLM
        # reads the tools into its own models first, which orders their keys as below).
        tools = [{"type": t["type"], "function": {k: t["function"][k] for k in (
            "name", "description", "parameters") if k in t["function"]}}
            for t in call["tools"] or []] or None
        rendered = tokenizer.apply_chat_template(
            call["messages"], tools=tools, chat_template=template,
            add_generation_prompt=True, tokenize=True, return_dict=False)
        assert call["prompt_ids"] == list(rendered)
        text = tokenizer.decode(call["completion_ids"], skip_special_tokens=True)
        output = call["output"]
        if output.get("tool_calls"):
            sampled = [json.loads(m) for m in
                       re.findall(r"<tool_call>\s*(.*?)\s*</tool_call>", text, re.S)]
            assert [s["name"] for s in sampled] == \
                [t["function"]["name"] for t in output["tool_calls"]]
            assert [s["arguments"] for s in sampled] == \
                [json.loads(t["function"]["arguments"]) for t in output["tool_calls"]]
        else:
            assert text == output["content"]


@pytest.mark.vllm
def test_example_agent_later_prompts_extend_earlier_calls(react_rollouts, tokenizer):
    """Each later call's prompt extends the earlier call's prompt; where it also extends the
    earlier completion, token-level merging is exact; where the template re-renders what the
    model wrote (a tool call's JSON), ctx-merge names the mismatch (see test_ctx_merge)."""
    _, records = react_rollouts
    multi = [r for r in records if len(r["calls"]) >= 2]
    assert multi, "no rollout made two calls"
    report = {"extends": 0, "re-rendered": 0}
    for record in multi:
        for earlier, later in zip(record["calls"], record["calls"][1:], strict=False):
            assert later["prompt_ids"][:len(earlier["prompt_ids"])] == earlier["prompt_ids"]
            context = earlier["prompt_ids"] + earlier["completion_ids"]
            if later["prompt_ids"][:len(context)] == context:
                report["extends"] += 1
            else:
                report["re-rendered"] += 1
                assert earlier["output"].get("tool_calls") or \
                    earlier["finish_reason"] == "length", earlier["output"]
    print(f"consecutive calls: {report}")


@pytest.mark.vllm
def test_example_agent_plain_workflow_streams_through_the_recorder(vllm_server):
    with_stream = run(["-w", wf("agentscope_stream"), "--max-tokens", "16",
                       "--base-url", vllm_server.base_url, "--model", "smollm2-135m"],
                      tasks(1))[1]
    call = with_stream[0]["calls"][0]
    assert call["stream"] is True and len(call["completion_ids"]) == len(call["logprobs"]) > 0
    assert with_stream[0]["final"]


@pytest.mark.vllm
@pytest.mark.slow
def test_ray_runs_the_workflows_as_tasks_recorded_through_the_same_endpoint(vllm_server):
    result, records = run(["-w", f"{EXAMPLE}:run", "--ray", "-n", "2", "--max-tokens", "48",
                           "--base-url", vllm_server.base_url, "--model", "smollm2-135m"],
                          studio_tasks(1))
    assert [r["status"] for r in records] == ["ok", "ok"], result.stderr
    assert all(r["calls"] and r["calls"][0]["prompt_ids"] for r in records)


def test_a_config_file_section_sets_rollout_options(tmp_path):
    config = tmp_path / "flywheel.yaml"
    config.write_text("rollout:\n  per-task: 3\n  temperature: 0.5\n")
    with canned() as up:
        _, records = run(["--config", config, "-w", wf("one_call"), *base(up)], tasks(1))
        assert {r["body"]["temperature"] for r in up.requests} == {0.5}
    assert len(records) == 3


def test_the_judge_reward_shows_the_judge_the_tasks_reference():
    from tracewheel.client import Endpoint, make_client
    from tracewheel.judge import Judge, JudgeSettings
    from tracewheel_rollout.rewards import judge_reward

    keep = chat_completion('{"verdict": "keep", "reason": "agrees"}')
    with CannedServer(lambda n: (200, {}, keep)) as server:
        endpoint = Endpoint(server.base_url, "judge-m")
        client = make_client(endpoint)
        score = judge_reward(Judge(JudgeSettings(endpoint=endpoint, rubrics=None), lambda: client))
        reward, info = asyncio.run(score({"query": "What is 6*7?", "reference": 42},
                                         {"final": "6*7 = \\boxed{42}", "calls": []}))
        user = server.requests[0]["body"]["messages"][1]["content"]
    assert reward == 1.0 and info["verdict"] == "keep"
    assert "## Agent's answer\n6*7 = \\boxed{42}" in user
    assert "## Known-good reference answer\n42" in user


def test_reward_judge_scores_each_rollout_by_the_judges_verdict_under_the_rubrics():
    verdicts = iter(['{"verdict": "keep", "reason": "right"}',
                     '{"verdict": "drop", "reason": "wrong"}'])
    with canned("\\boxed{4}") as up, CannedServer(
            lambda n: (200, {}, chat_completion(next(verdicts)))) as judge:
        result, records = run(["-w", wf("one_call"), "--reward", "judge", "--rubrics",
                               "Only exact sums pass.", "--judge-base-url", judge.base_url,
                               "--judge-model", "judge-m", "-j", "1", *base(up)], tasks(2))
        asked = [r["body"] for r in judge.requests]
    assert [r["reward"] for r in records] == [1.0, 0.0]
    assert [r["reward_info"]["verdict"] for r in records] == ["keep", "drop"]
    assert {b["model"] for b in asked} == {"judge-m"}
    assert all("Only exact sums pass." in b["messages"][0]["content"] for b in asked)
    assert "reward mean 0.500" in result.stderr


def test_call_ids_differ_for_other_calls_across_proxy_runs_and_repeat_for_the_same():
    def first_call_id(question: str, answer: str) -> str:
        calls = []
        with canned(answer) as up, Recorder(up.base_url, on_call=calls.append) as rec:
            client = openai.OpenAI(base_url=rec.base_url(), api_key="k", max_retries=0)
            client.chat.completions.create(model="m",
                                           messages=[{"role": "user", "content": question}])
        return calls[0]["id"]

    ids = {first_call_id("hi", "hello"), first_call_id("2+2?", "4"), first_call_id("hi", "yo")}
    assert len(ids) == 3  # the first call of the default session, three runs, three calls
    assert first_call_id("hi", "hello") == first_call_id("hi", "hello")


def test_rollout_into_head_ends_its_rollouts_quietly(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "query": f"What is {i}+{i}?"}) + "\n"
                             for i in range(40)))
    exe = Path(sys.executable).parent / "rollout"
    with canned("The answer is \\boxed{4}") as up:
        proc = subprocess.run(
            f"'{exe}' -w '{EXAMPLE}:run' --base-url {up.base_url} --model m -n 2 -j 4 '{tasks}' "
            f"| head -1", shell=True, capture_output=True, text=True, timeout=120,
            executable="/bin/bash")
    assert json.loads(proc.stdout)["id"] == "t0/0"
    assert "Task was destroyed" not in proc.stderr and "Traceback" not in proc.stderr


class BrokenStream:
    """Fault injection: an upstream that starts a streamed reply, then drops the connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            chunk = json.dumps({"choices": [{"index": 0, "delta": {"content": "par"},
                                             "token_ids": [1], "logprobs": {"content": [
                                                 {"token": "par", "logprob": -0.1}]}}],
                                "prompt_token_ids": [5, 6]})
            event = f"data: {chunk}\n\n".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n"
                         + f"{len(event):x}\r\n".encode() + event + b"\r\n")
            conn.close()  # no last chunk: the stream broke

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()


def test_a_broken_upstream_stream_reaches_the_agent_as_an_error_and_is_recorded(capfd):
    calls = []
    with BrokenStream() as up, Recorder(up.base_url, on_call=calls.append, retries=0) as rec:
        client = openai.OpenAI(base_url=rec.base_url(), api_key="k", max_retries=0)
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        with pytest.raises(openai.APIError, match="stream from .* broke"):
            for _ in stream:
                pass
    assert calls[0]["status"] == "error" and "broke" in calls[0]["error"]
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("broke") == 1


class Weights:
    """A canned upstream's numbered weights: /weight_info answers the version; ``during``
    (POST number -> new version) loads new weights while that call is in flight."""

    def __init__(self, during: dict[int, str]):
        self.version, self.during = "1", during

    def get(self, path: str):
        if path == "/weight_info":
            return 200, {}, {"weight_version": self.version}
        return 404, {}, {}

    def reply(self, n: int, payload, headers: dict | None = None):
        self.version = self.during.get(n, self.version)
        return 200, headers or {}, payload


def test_each_call_is_marked_with_the_weights_that_answered_it_and_asked_again_across_an_update():
    weights = Weights(during={1: "2"})  # new weights come in while the second call runs
    calls = []
    with CannedServer(lambda n: weights.reply(n, chat_completion(f"r{n}", token_ids=True)),
                      get=weights.get) as up, \
            Recorder(up.base_url, on_call=calls.append, weight_version="1") as rec:
        client = openai.OpenAI(base_url=rec.base_url(), api_key="k", max_retries=0)
        answers = [client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": q}]).choices[0].message.content
            for q in ("a", "b", "c")]
        posts = len(up.requests)
    # the second call was answered across the update (old or new weights: no telling): it
    # was asked again, and the agent saw only the answer of the new weights
    assert answers == ["r0", "r2", "r3"] and posts == 4
    assert [c["weight_version"] for c in calls] == ["1", "2", "2"]
    assert [c.get("version_retries") for c in calls] == [None, 1, None]


def test_a_stream_across_an_update_keeps_the_older_version_and_says_so():
    choice = {"index": 0, "delta": {"content": "ok"}, "token_ids": [1],
              "logprobs": {"content": [{"token": "ok", "logprob": -0.1}]},
              "finish_reason": "stop"}
    events = ("data: " + json.dumps({"choices": [choice], "prompt_token_ids": [5, 6]})
              + "\n\ndata: [DONE]\n\n")
    weights = Weights(during={0: "2"})
    calls = []
    with CannedServer(lambda n: weights.reply(n, events, {"content-type": "text/event-stream"}),
                      get=weights.get) as up, \
            Recorder(up.base_url, on_call=calls.append, weight_version="1") as rec:
        client = openai.OpenAI(base_url=rec.base_url(), api_key="k", max_retries=0)
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert text == "ok" and len(up.requests) == 1
    (call,) = calls
    assert call["status"] == "ok" and call["weight_version"] == "1"
    assert call["version_span"] == ["1", "2"]


@pytest.mark.parametrize("finished", [False, True])
def test_a_stream_that_ends_before_done_is_a_failed_call_not_a_reply(finished):
    """The upstream's response ends cleanly but early: no [DONE] (and, the first time, no
    finish_reason either). The agent gets an error, the call is recorded as failed."""
    choice = {"index": 0, "delta": {"content": "par"}, "token_ids": [1],
              "logprobs": {"content": [{"token": "par", "logprob": -0.1}]},
              **({"finish_reason": "stop"} if finished else {})}
    events = "data: " + json.dumps({"choices": [choice], "prompt_token_ids": [5, 6]}) + "\n\n"
    calls = []
    with CannedServer(lambda n: (200, {"content-type": "text/event-stream"}, events)) as up, \
            Recorder(up.base_url, on_call=calls.append, retries=0) as rec:
        client = openai.OpenAI(base_url=rec.base_url(), api_key="k", max_retries=0)
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        with pytest.raises(openai.APIError, match="stopped before"):
            for _ in stream:
                pass
    assert calls[0]["status"] == "error"
    assert ("[DONE]" if finished else "choice 0 finished") in calls[0]["error"]



def test_a_client_that_hangs_up_mid_request_is_neither_recorded_nor_logged(caplog):
    calls = []
    with canned("hi") as up, Recorder(up.base_url, on_call=calls.append) as rec:
        host, port = rec.base_url("s1").split("//")[1].split("/")[0].split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /s/s1/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mo")
            time.sleep(0.3)  # the recorder is waiting for the rest of the body
        time.sleep(0.3)
        client = openai.OpenAI(base_url=rec.base_url("s1"), api_key="k", max_retries=0)
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "hi"
    assert [c["status"] for c in calls] == ["ok"]
    assert not [r for r in caplog.records if r.exc_info], caplog.text


def test_a_server_that_cannot_start_is_tried_once_and_named(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "query": f"What is {i}+{i}?"}) + "\n"
                             for i in range(8)))
    missing = tmp_path / "no-model"
    result = CliRunner().invoke(rollout, ["-w", f"{EXAMPLE}:run", "--serve", str(missing),
                                          "-j", "4", str(tasks)])
    assert result.exit_code == 1
    assert result.output.count("serving") == 1, result.output  # not once per waiting rollout
    assert f"{missing}: no such model directory" in result.output
