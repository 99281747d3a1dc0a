"""Boxed answers: the spellings of the fixtures' real answers, and the manifests' ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.answers import answers_match, boxed_reward, boxed_values, normalize

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
    assert normalize(a) == normalize(b)


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
