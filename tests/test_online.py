"""The online loop (python -m tracewheel.online): sessions read as the gateway writes them, the
report's figures, and the whole loop against a real vLLM with LoRA adapters, a real gateway and
real training: a candidate better by the gate goes live, a bad one never answers a user."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracewheel.errors import TracewheelError
from tracewheel.online import Loop, OnlineConfig
from tracewheel.online_report import difference, write_report

ROOT = Path(__file__).resolve().parents[1]


def _session(sid: str, reward: float | None, calls: int = 1, policy: str = "base") -> dict:
    return {"id": sid, "task_id": sid, "reward": reward,
            "reward_info": {"method": "client"} if reward is not None else None,
            "calls": [{"policy": policy}] * calls, "failed_calls": []}


def test_sessions_are_read_as_they_end_and_a_half_written_one_waits(tmp_path):
    loop = Loop(OnlineConfig(out=str(tmp_path), batch=2), "base", "http://127.0.0.1:1")
    path = tmp_path / "sessions.jsonl"
    first = json.dumps(_session("a", 1.0)) + "\n" + json.dumps(_session("b", None)) + "\n"
    half = json.dumps(_session("c", 0.0))
    path.write_text(first + half[:20])
    loop.read_sessions()
    assert [s["id"] for s in loop.pool] == ["a"]
    assert loop.counts == {"sessions": 2, "with a reward": 1, "without a reward": 1,
                           "trained on": 0}
    path.write_text(first + half + "\n" + json.dumps(_session("d", 1.0, calls=0)) + "\n")
    loop.read_sessions()
    assert [s["id"] for s in loop.pool] == ["a", "c"]  # d had no call: nothing to learn from
    assert loop.counts["sessions"] == 4 and loop.counts["without a reward"] == 2
    with open(path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(TracewheelError, match=r"sessions.jsonl, line 5: not JSON"):
        loop.read_sessions()
    loop.events.close()


def test_a_step_of_a_stopped_loop_is_stopped_with_sigterm_and_cleans_up(tmp_path):
    """The loop stopped by a signal while a step runs: the step gets SIGTERM (and can remove
    its half-written output), not the SIGKILL that subprocess.run sends."""
    import os
    import signal
    import threading

    from tracewheel.online import run

    marker, started = tmp_path / "stopped", tmp_path / "started"
    child = ("import signal, sys, time, pathlib\n"
             f"def term(*_): pathlib.Path({str(marker)!r}).write_text('TERM'); sys.exit(143)\n"
             "signal.signal(signal.SIGTERM, term)\n"
             f"pathlib.Path({str(started)!r}).write_text('')\n"
             "time.sleep(60)\n")

    def interrupt() -> None:
        for _ in range(200):
            if started.exists():
                break
            threading.Event().wait(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run([sys.executable, "-c", child])
    assert marker.read_text() == "TERM"


def test_the_difference_of_two_shares_and_its_interval():
    d, low, high = difference([0.0] * 50 + [1.0] * 50, [0.0] * 20 + [1.0] * 80)
    assert d == pytest.approx(0.3)
    assert low == pytest.approx(0.3 - 1.96 * ((0.25 / 100 + 0.16 / 100) ** 0.5))
    assert high > d > low > 0


def test_the_report_shows_traffic_by_quarter_the_gate_per_candidate_and_calls_per_model(
        tmp_path):
    t0 = 1_000_000.0
    events = [{"time": t0, "event": "start", "live": "base"},
              {"time": t0 + 500, "event": "candidate", "candidate": "cand-1", "sessions": 40,
               "inverted": False, "live": "base", "promoted": True, "live_right": 0.2,
               "candidate_right": 0.4, "change": {"mean": 0.2, "low": 0.1, "high": 0.3},
               "tasks": 50, "reason": "right 0.400 against 0.200"},
              {"time": t0 + 700, "event": "candidate", "candidate": "cand-2", "sessions": 30,
               "inverted": True, "live": "cand-1", "promoted": False, "live_right": 0.4,
               "candidate_right": 0.1, "change": {"mean": -0.3, "low": -0.4, "high": -0.2},
               "tasks": 50, "reason": "the rule better needs its lower bound above 0"},
              {"time": t0 + 1000, "event": "end", "live": "cand-1",
               "counts": {"trained on": 60}}]
    users = [{"session": f"s{i}", "start": t0 + 10 * i, "end": t0 + 10 * i + 5,
              "right": i >= 50, "error": None} for i in range(100)]
    (tmp_path / "online.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (tmp_path / "users.jsonl").write_text("".join(json.dumps(u) + "\n" for u in users))
    sessions = [_session("x", 1.0, 2, "base"), _session("y", None, 1, "cand-1")]
    (tmp_path / "sessions.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sessions))
    text = write_report(tmp_path).read_text()
    assert "| 1 (0-4) | 25 | 0.000 [0.000, 0.000] |" in text
    assert "| 4 (12-17) | 25 | 1.000 [1.000, 1.000] |" in text
    assert "Last quarter against the first: +1.000" in text
    assert "| cand-1 | 40 | base | 0.200 | 0.400 | +0.200 [+0.100, +0.300] | 50 | **promoted** |" \
        in text
    assert "| cand-2 (rewards inverted) | 30 | cand-1 | 0.400 | 0.100 | " in text
    assert "kept aside" in text
    assert "| base | 2 |" in text and "| cand-1 | 1 |" in text
    assert "2 in, 1 with a reward" in text
    assert "40 in promoted candidates (60 learnt from by any candidate)" in text
    assert (tmp_path / "online.png").stat().st_size > 0


COLOURS = ROOT / "tests" / "fixtures" / "online" / "colours.py"


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory):
    from tracewheel.vllm import VLLMServer

    log = tmp_path_factory.mktemp("vllm-online") / "vllm.log"
    with VLLMServer("smollm2-135m", served_model_name="base", log_file=log,
                    lora_rank=8) as server:
        yield server


@pytest.mark.vllm
@pytest.mark.slow
def test_a_better_candidate_goes_live_and_a_bad_one_never_answers(lora_server, tmp_path):
    """The whole loop on real parts: users' sessions through the real gateway, candidates
    trained by train (LoRA), served beside the live model, gated on greedy rollouts. Candidate
    1 learns what users rewarded and goes live; candidate 2, trained on inverted rewards, is
    refused and never answers a user; no user call fails across the swap."""
    sys.path.insert(0, str(COLOURS.parent))
    from colours import PROMPTS

    gate = tmp_path / "gate.jsonl"
    gate.write_text("".join(json.dumps({"id": f"gate-{i}", "query": p})
                            + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "online"
    done = subprocess.run(
        [sys.executable, "-m", "tracewheel.online", "--server", lora_server.url,
         "--base", "smollm2-135m", "--gate-set", str(gate), "-w", f"{COLOURS}:run",
         "--gate-reward", "workflow", "--out", str(out), "--batch", "45", "--invert", "2",
         "--rule", "better",
         "--train-args", "--algo sft --min-reward 1 --lr 1e-3 --epochs 3",
         "--duration", "800", "--max-candidates", "2", "--idle-timeout", "30", "--poll", "1",
         "--traffic", f"{sys.executable} {COLOURS} 1200 1.0"],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in (out / "online.jsonl").read_text().splitlines()]
    cands = {e["candidate"]: e for e in events if e["event"] == "candidate"}
    assert cands["cand-1"]["promoted"], cands["cand-1"]["reason"]
    assert cands["cand-1"]["change"]["low"] > 0
    assert cands["cand-2"]["inverted"] and not cands["cand-2"]["promoted"]
    assert cands["cand-2"]["live"] == "cand-1"
    sessions = [json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()]
    answered = {c["policy"] for s in sessions for c in s["calls"]}
    assert "cand-1" in answered and "cand-2" not in answered
    assert not any(s["failed_calls"] for s in sessions)
    assert "**promoted**" in (out / "report.md").read_text()
