"""rollout gateway: sessions, rewards and feedback over live traffic, each ended session one
rollout record. The gateway runs as a process, as in production; clients are real HTTP clients
(openai's, and httpx for the feedback API) talking to it the ways AReaL's and OpenClaw-RL's
do. The upstream is a canned server here (what it answers does not matter to sessions); the
last test puts the gateway in front of a real vLLM and trains on what it wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from canned import CannedServer, chat_completion

from conftest import free_port

BIN = Path(sys.executable).parent


@contextmanager
def gateway(upstream: str, out: Path, *args: str):
    """The gateway as a process, writing to ``out``; yields its root URL and, after the block,
    the process is stopped with SIGINT (its summary in ``proc.stderr_text``)."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "rollout"), "gateway", "--upstream", upstream,
                             "--port", str(port), "-o", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "serving at" in line, line + proc.stderr.read()
        proc.root = f"http://127.0.0.1:{port}"
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        _, proc.stderr_text = proc.communicate(timeout=30)
        assert proc.returncode == 0, proc.stderr_text


def _records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def _ask(base_url: str, text: str, key: str = "k", headers: dict | None = None) -> str:
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0,
                           default_headers=headers or {})
    reply = client.chat.completions.create(model="m",
                                           messages=[{"role": "user", "content": text}])
    return reply.id


@pytest.fixture
def upstream():
    with CannedServer(lambda n: (200, {}, chat_completion(f"answer {n}", token_ids=True))) as up:
        yield up


def test_areal_style_sessions_by_key_with_rewards_and_feedback(upstream, tmp_path):
    out = tmp_path / "sessions.jsonl"
    with gateway(upstream.base_url, out) as gw:
        api = httpx.Client(base_url=gw.root, timeout=10)
        started = api.post("/rl/start_session", json={"task_id": "t1", "reference": "42"})
        sid, key = started.json()["session_id"], started.json()["api_key"]
        _ask(f"{gw.root}/v1", "What is 6 x 7?", key=key)
        completion = _ask(f"{gw.root}/v1", "Are you sure?", key=key)
        # a second session: rewarded per completion, and by its user's thumbs
        other = api.post("/rl/start_session", json={}).json()
        reply = _ask(f"{gw.root}/v1", "Hello", key=other["api_key"])
        assert api.post("/rl/set_reward", json={"completion_id": reply, "reward": 0.5}
                        ).status_code == 200
        assert api.post("/rl/feedback", json={"session_id": other["session_id"],
                                              "thumbs": "down", "text": "too slow"}
                        ).status_code == 200
        assert api.post("/rl/set_reward", json={"session_id": sid, "reward": 1}
                        ).status_code == 200
        ended = api.post("/rl/end_session", json={"session_id": sid})
        assert ended.json() == {"ok": True, "session_id": sid, "calls": 2}
        # the record is out as the session ends, before the gateway stops
        time.sleep(0.5)
        assert list(_records(out)) == [sid]
        # a reward after the end, or for a session nobody started, is refused and says why
        late = api.post("/rl/set_reward", json={"session_id": sid, "reward": 0})
        assert late.status_code == 409 and "has ended" in late.json()["error"]["message"]
        unknown = api.post("/rl/set_reward", json={"session_id": "nobody", "reward": 1})
        assert unknown.status_code == 404 and "no session 'nobody'" in unknown.text
        assert completion.startswith("chatcmpl-")
    records = _records(out)
    assert set(records) == {sid, other["session_id"]}
    first = records[sid]
    assert first["task_id"] == "t1" and first["reference"] == "42"
    assert first["query"] == "What is 6 x 7?" and first["final"] == "answer 1"
    assert first["reward"] == 1.0 and first["reward_info"] == {"method": "client"}
    assert [len(c["completion_ids"]) for c in first["calls"]] == [8, 8]
    assert first["metadata"]["session"]["ended"] == "client"
    second = records[other["session_id"]]
    assert second["reward"] == 0.5 and second["metadata"]["session"]["ended"] == "stopped"
    assert second["metadata"]["feedback"] == [{"thumbs": "down", "text": "too slow"}]
    # the session keys went nowhere: not upstream, not into a record
    for request in upstream.requests:
        assert "tw-" not in request["headers"].get("Authorization", "")
    assert key not in out.read_text() and other["api_key"] not in out.read_text()
    assert "rollout gateway: 2 sessions, 2 with a reward, 0 without a reward" in gw.stderr_text


def test_openclaw_style_headers_side_turns_and_done(upstream, tmp_path):
    out = tmp_path / "sessions.jsonl"
    with gateway(upstream.base_url, out) as gw:
        base = f"{gw.root}/v1"
        _ask(base, "plan a trip", headers={"X-Session-Id": "oc-1"})
        _ask(base, "summarise the chat so far", headers={"X-Session-Id": "oc-1",
                                                         "X-Turn-Type": "side"})
        _ask(base, "book it", headers={"X-Session-Id": "oc-1", "X-Session-Done": "true"})
        # a call that comes for a session already ended: written on its own, not lost
        time.sleep(0.3)
        _ask(base, "one more thing", headers={"X-Session-Id": "oc-1"})
        # by path, as rollout run's workflows do; and a call with no session at all
        _ask(f"{gw.root}/s/by-path/v1", "hi")
        _ask(base, "no session")
    records = list(map(json.loads, out.read_text().splitlines()))
    oc = next(r for r in records if r["id"] == "oc-1" and not r["metadata"].get("late"))
    assert [c["messages"][-1]["content"] for c in oc["calls"]] == ["plan a trip", "book it"]
    assert oc["metadata"]["session"] == {**oc["metadata"]["session"], "side_calls": 1,
                                         "ended": "client"}
    late = [r for r in records if r["metadata"].get("late")]
    assert [r["query"] for r in late] == ["one more thing"]
    assert any(r["id"] == "by-path" for r in records)
    alone = [r for r in records if r["query"] == "no session"]
    assert len(alone) == 1 and alone[0]["id"].startswith("call-")
    assert all(r["reward"] is None for r in records)
    assert "1 calls without a session" in gw.stderr_text
    assert "1 calls after their session ended" in gw.stderr_text


def test_idle_sessions_end_and_feedback_can_be_the_reward(upstream, tmp_path):
    out = tmp_path / "sessions.jsonl"
    with gateway(upstream.base_url, out, "--idle-timeout", "0.5", "--reward", "feedback") as gw:
        base = f"{gw.root}/v1"
        _ask(base, "q1", headers={"X-Session-Id": "liked"})
        httpx.post(f"{gw.root}/feedback", json={"session_id": "liked", "thumbs": "up"})
        _ask(base, "q2", headers={"X-Session-Id": "silent"})
        time.sleep(2)  # both idle past 0.5 s: ended by the gateway
        bad = httpx.post(f"{gw.root}/rl/feedback", json={"session_id": "x", "thumbs": "meh"})
        assert bad.status_code == 400 and "thumbs" in bad.json()["error"]["message"]
        assert httpx.post(f"{gw.root}/rl/set_reward", content=b"not json").status_code == 400
    records = _records(out)
    assert records["liked"]["reward"] == 1.0
    assert records["liked"]["reward_info"] == {"method": "feedback", "thumbs": "up"}
    assert records["silent"]["reward"] is None
    assert {r["metadata"]["session"]["ended"] for r in records.values()} == {"idle"}
    assert "2 ended idle" in gw.stderr_text and "1 without a reward" in gw.stderr_text


def test_sessions_are_rollouts_that_ctx_merge_reads(upstream, tmp_path):
    out = tmp_path / "sessions.jsonl"
    with gateway(upstream.base_url, out) as gw:
        _ask(f"{gw.root}/v1", "q", headers={"X-Session-Id": "s1"})
        httpx.post(f"{gw.root}/rl/set_reward", json={"session_id": "s1", "reward": 1})
    merged = subprocess.run([str(BIN / "ctx-merge"), str(out)], capture_output=True, text=True,
                            timeout=120)
    assert merged.returncode == 0, merged.stderr
    (sample,) = map(json.loads, merged.stdout.splitlines())
    assert sample["rollout_id"] == "s1" and sample["reward"] == 1.0
    assert sum(sample["loss_mask"]) == len("answer 0")


def test_in_front_of_a_real_vllm_a_session_becomes_a_training_step(vllm_server, tmp_path):
    """Two turns of one conversation through the gateway to a real vLLM: the second call is
    sent as the first's tokens plus the new turn (continued), the session's record carries
    both calls' exact tokens, ctx-merge makes them one sample, and train takes a step on it."""
    out = tmp_path / "sessions.jsonl"
    with gateway(vllm_server.base_url, out) as gw:
        client = openai.OpenAI(base_url=f"{gw.root}/v1", api_key="EMPTY", max_retries=0,
                               default_headers={"X-Session-Id": "real"})
        messages = [{"role": "user", "content": "What is 2 + 2?"}]
        first = client.chat.completions.create(model="smollm2-135m", messages=messages,
                                               max_tokens=12, temperature=0)
        messages += [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "And 3 + 3?"}]
        second = client.chat.completions.create(model="smollm2-135m", messages=messages,
                                                max_tokens=12, temperature=0)
        api = httpx.Client(base_url=gw.root, timeout=10)
        assert api.post("/rl/set_reward", json={"completion_id": second.id, "reward": 1.0}
                        ).json() == {"ok": True, "session_id": "real"}
        assert api.post("/rl/end_session", json={"session_id": "real"}).json()["calls"] == 2
    (record,) = _records(out).values()
    calls = record["calls"]
    assert [c["tokens"] for c in calls] == ["rendered", "continued"]
    assert calls[1]["prompt_ids"][:len(calls[0]["prompt_ids"])] == calls[0]["prompt_ids"]
    assert calls[1]["completion_id"] == second.id and record["reward"] == 1.0
    samples = tmp_path / "samples.jsonl"
    merged = subprocess.run([str(BIN / "ctx-merge"), str(out), "-o", str(samples)],
                            capture_output=True, text=True, timeout=120)
    assert merged.returncode == 0, merged.stderr
    (sample,) = map(json.loads, samples.read_text().splitlines())
    assert sample["calls"]["count"] == 2
    trained = subprocess.run([str(BIN / "train"), "--max-steps", "1", "--out",
                              str(tmp_path / "ckpt"), str(samples)],
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "ckpt" / "config.json").exists()


def test_promotion_switches_the_live_model_without_failing_a_request(tmp_path):
    """--live: every call goes to the live model; /rl/promote switches it while calls are in
    flight (they finish on the model they started on, none fails), refuses a model the
    upstream does not serve, and a rollback is a promotion of the earlier model."""
    import concurrent.futures

    def get(path: str):
        models = {"data": [{"id": "base"}, {"id": "cand"}]}
        return (200, {}, models) if path == "/v1/models" else (404, {}, {})

    out = tmp_path / "sessions.jsonl"
    with CannedServer(lambda n: (200, {}, chat_completion("ok", token_ids=True)),
                      delay=lambda n: 0.3, get=get) as up, \
            gateway(up.base_url, out, "--live", "base") as gw:
        api = httpx.Client(base_url=gw.root, timeout=10)
        base = f"{gw.root}/v1"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            asked = [pool.submit(_ask, base, f"q{i}", headers={"X-Session-Id": f"s{i}",
                                                                  "X-Session-Done": "1"})
                     for i in range(16)]
            # promote once a call is in flight on base: the upstream answers one at a time,
            # 0.3 s each, so most of the 16 are not yet sent
            deadline = time.monotonic() + 60
            while not up.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = api.post("/rl/promote", json={"model": "nope"})
            assert refused.status_code == 404 and "stays 'base'" in refused.text
            assert api.post("/rl/promote", json={"model": "cand"}).json()["before"] == "base"
            assert all(f.result() for f in asked)  # no request failed
        assert api.get("/rl/live").json()["model"] == "cand"
        _ask(base, "after", headers={"X-Session-Id": "after", "X-Session-Done": "1"})
        api.post("/rl/promote", json={"model": "base"})  # the rollback
        _ask(base, "back", headers={"X-Session-Id": "back", "X-Session-Done": "1"})
        live = api.get("/rl/live").json()
        assert [p["model"] for p in live["promotions"]] == ["cand", "base"]
        sent = [r["body"]["model"] for r in up.requests]
    records = _records(out)
    answered = {sid: r["calls"][0]["policy"] for sid, r in records.items()}
    assert answered["after"] == "cand" and answered["back"] == "base"
    assert {answered[f"s{i}"] for i in range(16)} == {"base", "cand"}
    assert sent.count("cand") == sum(v == "cand" for v in answered.values())
    assert all(not r["failed_calls"] for r in records.values())
    assert "2 promotions" in gw.stderr_text


def test_a_gateway_killed_mid_session_keeps_every_session_that_ended(upstream, tmp_path):
    """-o FILE is a log: each ended session a whole line, flushed as it ends; SIGKILL loses the
    open sessions only, and the next gateway appends."""
    out = tmp_path / "sessions.jsonl"
    port = free_port()
    command = [str(BIN / "rollout"), "gateway", "--upstream", upstream.base_url,
               "--port", str(port), "-o", str(out)]
    for run, session in enumerate(("first", "second")):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            assert "serving at" in proc.stderr.readline()
            base = f"http://127.0.0.1:{port}/v1"
            _ask(base, "q", headers={"X-Session-Id": session, "X-Session-Done": "1"})
            _ask(base, "q", headers={"X-Session-Id": f"open-{run}"})
            time.sleep(0.3)
        finally:
            proc.kill()
            proc.communicate(timeout=30)
    assert list(_records(out)) == ["first", "second"]
    assert list(tmp_path.iterdir()) == [out]


def test_a_bad_reward_option_is_a_usage_error():
    proc = subprocess.run([str(BIN / "rollout"), "gateway", "--upstream", "http://h/v1",
                           "--reward", "thumbs"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--reward 'thumbs': feedback, or FILE.py:FN" in proc.stderr
