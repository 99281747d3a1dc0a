"""Problems people wrote (examples/gsm8k.py): GSM8K's training split as the demo's production
traffic and evaluation set. Every program the production agent runs computes the solution's
answer, the two pools never share a problem, and the committed evaluation set is what the
writer makes."""

from __future__ import annotations

import json

import pytest

from tracewheel.dedup import normalize_text

from conftest import ROOT, load_script

EVAL = ROOT / "examples" / "gsm8k-eval.jsonl"


@pytest.fixture(scope="module")
def gsm8k():
    return load_script("examples/gsm8k.py")


def test_a_solution_becomes_named_steps_that_print_its_answer(gsm8k):
    solution = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n")
    lines, value = gsm8k.program(solution)
    assert lines == ["clips_may = 48 / 2", "clips_april_may = 48 + clips_may",
                     "print(clips_april_may)"]
    assert value == 72 and gsm8k.run("\n".join(lines)) == "72.0\n"
    assert gsm8k._working(solution) == "Natalia sold 72 clips altogether in April and May."


@pytest.mark.parametrize("solution", [
    "He has 3 + 4 = <<3+4=8>>8 apples.",          # the annotation says what it does not do
    "The cost is <<27=27>>27 dollars.",            # no arithmetic: done in the text
    "No calculator steps at all.",
])
def test_a_solution_whose_code_is_not_sure_is_left_out(gsm8k, solution):
    assert gsm8k.program(solution) is None


def test_every_usable_problem_prints_its_answer_in_the_agents_sandbox(gsm8k):
    """What the production traces show the tool printing is what the sandbox prints."""
    from tracewheel.sandbox import run_python

    usable = gsm8k.usable()
    assert len(usable) > 6000 and all(p.level >= 1 for p in usable)
    for problem in usable[::400]:
        printed = run_python(problem.code, timeout=30).text()
        assert printed == gsm8k.run(problem.code).strip()
        assert float(printed) == problem.answer


def test_the_pools_never_share_a_problem_and_the_draws_are_stable(gsm8k):
    production = gsm8k.problems(500, 7, pool="production")
    evaluation = gsm8k.problems(200, 0, pool="eval")
    assert not {normalize_text(p.query) for p in production} & \
        {normalize_text(p.query) for p in evaluation}
    assert all(p.level <= gsm8k.MAX_STEPS for p in production + evaluation)
    assert gsm8k.problems(500, 7, pool="production") == production
    with pytest.raises(ValueError, match="eval pool has .* problems"):
        gsm8k.problems(10_000, 0, pool="eval")


def test_the_committed_evaluation_set_is_what_the_writer_makes(gsm8k, tmp_path):
    tasks = [json.loads(line) for line in EVAL.read_text().splitlines()]
    assert gsm8k.main(["-n", str(len(tasks)), "--seed", "0", "-o", str(tmp_path / "e.jsonl")]) == 0
    assert (tmp_path / "e.jsonl").read_text() == EVAL.read_text()
    assert len(tasks) >= 200 and len({t["id"] for t in tasks}) == len(tasks)
    assert {t["metadata"]["source"] for t in tasks} == {"gsm8k-train"}


def test_the_test_split_is_a_fixed_sample_named_as_such(gsm8k):
    tasks = gsm8k.test_tasks(300, 0)
    assert len(tasks) == 300 == len({t["id"] for t in tasks})
    assert tasks == gsm8k.test_tasks(300, 0)
    assert all(t["id"].startswith("gsm8k-test-") and t["metadata"]["source"] == "gsm8k-test"
               for t in tasks)
    assert len(gsm8k.test_tasks(0, 0)) == 1319
