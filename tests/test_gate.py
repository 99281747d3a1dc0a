"""tracewheel.gate: the decision whether a candidate goes live, from the live model's and the
candidate's rollouts of the same gate set, paired by task."""

from __future__ import annotations

import json

import pytest

from tracewheel.gate import REFUSED, main


def _rollouts(path, right: list[bool]):
    path.write_text("".join(json.dumps({
        "id": f"t{i}/0", "task_id": f"t{i}", "reward": float(r),
        "reward_info": {"match": r}}) + "\n" for i, r in enumerate(right)))
    return str(path)


def _verdict(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_a_candidate_as_good_as_the_live_model_is_promoted_and_a_worse_one_refused(
        tmp_path, capsys):
    live = _rollouts(tmp_path / "live.jsonl", [i % 2 == 0 for i in range(200)])
    same = _rollouts(tmp_path / "same.jsonl", [i % 2 == 0 for i in range(200)])
    assert main([live, same]) == 0
    verdict = _verdict(capsys)
    assert verdict["decision"] == "promote" and verdict["tasks"] == 200
    assert verdict["change"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    # inverted: right where the live model was wrong and the other way round, 40 tasks
    # fewer right: -0.2, its whole interval below the margin
    worse = _rollouts(tmp_path / "worse.jsonl",
                      [i % 2 == 0 and i >= 40 for i in range(200)])
    assert main([live, worse]) == REFUSED
    verdict = _verdict(capsys)
    assert verdict["decision"] == "refuse" and verdict["change"]["high"] < -0.05
    assert "the rule not-worse needs its lower bound at least -0.05" in verdict["reason"]


def test_the_better_rule_promotes_only_a_gain_the_gate_set_can_tell_from_noise(
        tmp_path, capsys):
    live = _rollouts(tmp_path / "live.jsonl", [False] * 200)
    slightly = _rollouts(tmp_path / "slightly.jsonl", [i < 2 for i in range(200)])
    clearly = _rollouts(tmp_path / "clearly.jsonl", [i < 30 for i in range(200)])
    assert main(["--rule", "better", live, slightly]) == REFUSED
    assert _verdict(capsys)["change"]["low"] <= 0
    assert main(["--rule", "better", live, clearly]) == 0
    assert _verdict(capsys)["change"]["low"] > 0
    # the default, not-worse, lets the small gain through
    assert main([live, slightly]) == 0


@pytest.mark.parametrize("content, message", [
    ("{\"task_id\": \"t0\"}\nnot json\n", "bad.jsonl:2: not JSON"),
    ("[1, 2]\n", "bad.jsonl:1: not a rollout record (no task_id)"),
    ("", "bad.jsonl: no rollout records"),
])
def test_bad_input_names_the_file_and_line(tmp_path, capsys, content, message):
    live = _rollouts(tmp_path / "live.jsonl", [True])
    (tmp_path / "bad.jsonl").write_text(content)
    assert main([live, str(tmp_path / "bad.jsonl")]) == 1
    assert message in capsys.readouterr().err


def test_no_graded_task_in_common_is_an_error(tmp_path, capsys):
    live = _rollouts(tmp_path / "live.jsonl", [True])
    (tmp_path / "other.jsonl").write_text(json.dumps({"task_id": "x", "reward": 1}) + "\n")
    assert main([live, str(tmp_path / "other.jsonl")]) == 1
    assert "no graded task in common" in capsys.readouterr().err
