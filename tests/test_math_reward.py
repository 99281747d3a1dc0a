r"""The demo's rewards (examples/math_reward.py), loaded the way rollout's --reward loads them:
the format credit, and the worked-out credit that a bare ``\boxed{42}`` cannot earn."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracewheel.workflow import load_callable

REWARDS = Path(__file__).resolve().parent.parent / "examples" / "math_reward.py"
reward = load_callable(f"{REWARDS}:reward", "reward")
worked_reward = load_callable(f"{REWARDS}:worked_reward", "reward")

TASK = {"id": "t", "query": "Mateo has 14 shells. He buys 13 more and then gives 19 to a friend. "
                            "How many shells does Mateo have now?", "reference": "8"}


def rollout(final: str, printed: list[str] = ()) -> dict:
    """A rollout record as rollout writes it: each tool result is in the next call's messages."""
    tool = [{"role": "tool", "tool_call_id": f"c{i}", "name": "execute_python_code",
             "content": text} for i, text in enumerate(printed)]
    messages = [{"role": "user", "content": TASK["query"]}, *tool]
    return {"final": final, "calls": [{"messages": messages}]}


@pytest.mark.parametrize("score", [reward, worked_reward])
def test_a_right_boxed_answer_scores_one_and_no_reference_scores_none(score):
    assert score(TASK, rollout("14 + 13 - 19 = 8\n\\boxed{8}"))[0] == 1.0
    value, info = score({**TASK, "reference": None}, rollout("\\boxed{8}"))
    assert value is None and info["reason"] == "the task has no reference"
    assert score(TASK, rollout("Mateo has 8 shells."))[0] == 0.0


def test_a_bare_guess_earns_the_format_credit_only_from_reward():
    guess = rollout("\\boxed{42}")
    assert reward(TASK, guess)[0] == pytest.approx(0.2)
    value, info = worked_reward(TASK, guess)
    assert value == 0.0 and info["worked"] is None and info["match"] is False


@pytest.mark.parametrize("final, printed, how", [
    ("The code says 60.\n\\boxed{60}", ["60\n"], "code"),
    ("14 + 13 + 19 = 46 shells.\n\\boxed{46}", [], "equation"),
    ("14 × 13 = 182\n\\boxed{182}", [], "equation"),
    ("$14 + $13 = $27\n\\boxed{27}", [], "equation"),
    # Wrong arithmetic, a number not computed, no number of the question, a power: guesses.
    ("14 + 13 + 1 + 19 = 60\n\\boxed{60}", [], None),
    ("14 + 13 = 27\n\\boxed{60}", ["27"], None),
    ("1 + 1 = 2\n\\boxed{2}", [], None),
    ("14 ** 2 = 196\n\\boxed{196}", [], None),
    ("The code failed.\n\\boxed{60}", ["Traceback ... line 60\n(exit status 1)"], None),
])
def test_a_wrong_answer_earns_the_credit_where_the_agent_worked_it_out(final, printed, how):
    value, info = worked_reward(TASK, rollout(final, printed))
    assert info["match"] is False and info["worked"] == how
    assert value == (pytest.approx(0.2) if how else 0.0)
