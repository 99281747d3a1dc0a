"""Boxed answers: the spellings of the fixtures' real answers, and the manifests' ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracewheel.answers import (
    answers_match,
    boxed_reward,
    boxed_values,
    check_answer,
    normalize_answer,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "studio"


def test_boxed_values_handle_nesting_and_several_boxes():
    assert boxed_values(r"so \boxed{\frac{5}{12}} and \boxed{2}") == [r"\frac{5}{12}", "2"]
    assert boxed_values("no box") == [] and boxed_values(r"\boxed{unclosed") == []


@pytest.mark.parametrize("a, b", [
    ("7,006,652", "7006652"), (r"\frac{5}{12}", "5/12"), (r"\dfrac{10}{4}", "2.5"),
    (r"210 \text{ minutes}", "210"), ("0.30", ".3"), (r"\$1,234.50", "1234.5"),
    (r"50\%", "50"), ("42.", "42"), ("Paris", "paris"),
])
def test_spellings_of_the_same_answer_match(a, b):
    assert normalize_answer(a) == normalize_answer(b)


def test_different_answers_do_not_match():
    assert not answers_match(["256"], "265")
    assert not answers_match([], "12")
    assert answers_match(["2", "3"], "2, 3") and not answers_match(["2"], "2, 3")
    assert answers_match(["3"], "12") is False


def test_the_manifests_grade_agrees_with_boxed_reward():
    graded = 0
    for manifest in FIXTURES.glob("*.manifest.json"):
        for run in json.loads(manifest.read_text())["runs"]:
            for turn in run["turns"]:
                if turn["expected_answer"] is None or turn["is_correct"] is None:
                    continue
                reward, _ = boxed_reward(turn["scripted_final_answer"], turn["expected_answer"])
                assert reward == float(bool(turn["is_correct"]) and turn["has_boxed"]), turn
                graded += 1
    assert graded > 50


def test_no_reference_means_no_reward():
    reward, info = boxed_reward(r"\boxed{4}", None)
    assert reward is None and info["reason"] == "the task has no reference"


@pytest.mark.parametrize("answer, reference, outcome, kind", [
    (r"so \boxed{72}", "72", "agree", "equal"),
    (r"\boxed{265}", "256", "contradict", "different value"),
    (r"\boxed{7,006,652}", 7006652, "agree", "equal"),           # a number as the reference
    (r"\boxed{\frac{5}{12}}", "5/12", "agree", "equal"),
    (r"\boxed{600 minutes}", "600", "agree", "equal"),            # a unit after the number
    (r"\boxed{x = 5}", "5", "agree", "equal"),
    (r"\boxed{3} and \boxed{2}", "2, 3", "agree", "equal"),       # several values, any order
    (r"\boxed{3}", "2, 3", "contradict", "different value"),
    (r"first \boxed{40}, corrected: \boxed{48}", "48", "agree", "equal"),  # the last box counts
    ("In total Mark has 10 + 18 + 7 = 35 flowers.", "35", "agree", "equal"),  # no box
    ("20% of $25 is $5, so the sale price is $30.", "20", "contradict", "different value"),
    ("The answer is 42 apples (that's 6 × 7).", "42", "undecided", "not the final number"),
    ("she earned $10. Hope this helps!", "10", "agree", "equal"),
    ("so the sum is 5/12.", "5/12", "agree", "equal"),
    ("so x = 2 or x = 3.", "2, 3", "agree", "equal"),
    ("Paris", "paris", "agree", "equal"),
    ("London", "Paris", "contradict", "different value"),
    ("Paris, France", "Paris", "undecided", "texts differ"),
    ("five", "5", "undecided", "number and text"),
    (r"\boxed{28.274}", "28.27", "undecided", "equal only rounded"),  # rounded, or wrong?
    (r"\boxed{28.3}", "28", "contradict", "different value"),       # an integer is exact
    ("Could you type the problem here so I can solve it for you?", "4", "undecided",
     "no final value"),
    (None, "4", "contradict", "no answer"),
    (r"\boxed{4}", None, "undecided", "no reference"),
])
def test_check_answer_agrees_contradicts_or_says_it_cannot_tell(answer, reference, outcome,
                                                                 kind):
    check = check_answer(answer, reference)
    assert (check.outcome, check.kind) == (outcome, kind), check


def test_the_check_agrees_with_the_manifests_grade_on_every_gradable_turn():
    """The fixtures' ground truth: every graded answer, boxed or not, is read the same way."""
    decided = 0
    for manifest in FIXTURES.glob("*.manifest.json"):
        for run in json.loads(manifest.read_text())["runs"]:
            for turn in run["turns"]:
                if turn["expected_answer"] is None or turn["is_correct"] is None:
                    continue
                check = check_answer(turn["scripted_final_answer"], turn["expected_answer"])
                assert check.outcome == ("agree" if turn["is_correct"] else "contradict"), turn
                decided += 1
    assert decided > 50
