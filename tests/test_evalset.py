"""The evaluation set: generated the same way every time, and never seen by training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from tracewheel.dedup import normalize_text
from tracewheel.evalset import main as evalset
from tracewheel.report import main as report_main

from conftest import ROOT, load_script

EVAL = ROOT / "examples" / "math-eval.jsonl"


def _generator():
    return load_script("examples/math_eval.py")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_committed_set_is_what_the_generator_writes_with_its_seed():
    tasks = _read(EVAL)
    assert tasks == _generator().generate(len(tasks), 0)
    assert len(tasks) >= 100
    assert len({t["id"] for t in tasks}) == len(tasks)
    assert len({normalize_text(t["query"]) for t in tasks}) == len(tasks)
    assert all(t["reference"].isdigit() for t in tasks)


def test_the_answers_are_computed_right():
    """A few problems worked by hand against the generator's answers, and every template's code
    run in the agent's own sandbox prints its answer (what the production traces show)."""
    from tracewheel.sandbox import run_python

    by_kind = {}
    for t in _read(EVAL):
        by_kind.setdefault(t["metadata"]["kind"], t)
    assert len(by_kind) == len(_generator().TEMPLATES)
    numbers = {k: [int(w.strip("$?.,")) for w in t["query"].split() if w.strip("$?.,").isdigit()]
               for k, t in by_kind.items()}
    boxes, per, extra, sold = numbers["boxes_sold"]
    assert by_kind["boxes_sold"]["reference"] == str(boxes * per + extra - sold)
    rate, minutes = numbers["pay_minutes"]
    assert by_kind["pay_minutes"]["reference"] == str(rate * minutes // 60)
    dollars, quarters = numbers["dollars_cents"]
    assert by_kind["dollars_cents"]["reference"] == str(100 * dollars + 25 * quarters)
    for problem in _generator().problems(len(by_kind), 0):
        assert run_python(problem.code, timeout=30).text() == str(problem.answer), problem


def test_no_task_of_the_demo_database_is_in_the_set():
    """Every task the demo could train on (all of its database, before any filter) differs
    from every evaluation task, of either source, by id and by normalised query."""
    out = subprocess.run([str(Path(sys.executable).parent / "trace-export"), "-q",
                          str(ROOT / "examples" / "demo.sqlite")],
                         capture_output=True, text=True, check=True).stdout
    train = [json.loads(line) for line in out.splitlines()]
    assert len(train) > 40
    evaluation = _read(EVAL) + _read(ROOT / "examples" / "gsm8k-eval.jsonl")
    assert not {t["id"] for t in train} & {t["id"] for t in evaluation}
    assert not ({normalize_text(t["query"]) for t in train}
                & {normalize_text(t["query"]) for t in evaluation})


def _check(tmp_path, train, tasks, *args):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(t) + "\n" for t in train))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(evalset, ["--train", str(tmp_path / "train.jsonl"),
                                          str(tmp_path / "eval.jsonl"), "-o", str(out), *args])
    return result, out


def test_the_loop_refuses_an_evaluation_task_that_training_sees(tmp_path):
    tasks = [{"id": "e1", "query": "How many legs do 3 cows have?", "reference": "12"},
             {"id": "e2", "query": "What is 6 times 7?", "reference": "42"}]
    fine, out = _check(tmp_path, [{"id": "t1", "query": "What is 2 plus 2?"}], tasks)
    assert fine.exit_code == 0 and _read(out) == tasks

    cases = [
        ([{"id": "e2", "query": "Something else?"}], "task e2 has the id of a training task"),
        ([{"id": "t9", "query": "what is 6 TIMES 7 ?!"}], "task e2 asks what training task t9"),
        ([{"id": "p1", "query": "Seven times six is?", "augment": {"parents": ["e1"]}}],
         "task e1 has the id of the origin of paraphrase p1"),
    ]
    for train, message in cases:
        out.unlink(missing_ok=True)
        result, out = _check(tmp_path, train, tasks)
        assert result.exit_code == 1, result.output
        assert "eval.jsonl:" in result.output and message in result.output
        assert not out.exists()  # no partial output
        assert not list(tmp_path.glob(".out.jsonl*"))

    skipped, out = _check(tmp_path, cases[1][0], tasks, "--skip-invalid")
    assert skipped.exit_code == 0 and [t["id"] for t in _read(out)] == ["e1"]
    assert "1 invalid" in skipped.output


def test_an_evaluation_task_needs_its_answer(tmp_path):
    result, out = _check(tmp_path, [], [{"id": "e1", "query": "What is 6 times 7?"}])
    assert result.exit_code == 1 and "eval.jsonl:1: task e1 has no reference" in result.output


def _rollouts(rewards: dict[str, float]) -> str:
    return "".join(json.dumps({"id": f"{t}/0", "task_id": t, "group": t, "status": "ok",
                               "reward": r, "reward_info": {"match": r == 1.0}, "calls": []})
                   + "\n" for t, r in rewards.items())


def test_the_report_gives_paired_changes_on_the_evaluation_set(tmp_path):
    run = tmp_path / "demo"
    levels = [{f"e{k}": 0.2 if k % 2 else 0.0 for k in range(100)},
              {f"e{k}": 0.2 for k in range(100)},
              {f"e{k}": 1.0 if k < 30 else 0.2 for k in range(100)}]
    for i, rewards in enumerate(levels):
        (run / f"iter-{i}").mkdir(parents=True)
        (run / f"iter-{i}" / "eval-set.jsonl").write_text(_rollouts(rewards))
    assert report_main([str(run)]) == 0
    text = (run / "report.md").read_text()
    section = text.split("## Evaluation set")[1].split("##")[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| after")]
    # right answers first: 0.3 after iteration 2, +0.3 from before; then the reward,
    # iteration 1: +0.1 from before and from the start; iteration 2: +0.24 from before
    assert rows[1][1].startswith("0.300") and rows[1][2].startswith("+0.300 [+0.")
    assert rows[0][5].startswith("+0.100 [") and rows[0][6].startswith("+0.100 [")
    assert rows[1][5].startswith("+0.240 [+0.") and rows[1][6].startswith("+0.340 [+0.")


def test_an_evaluation_set_of_several_files_is_checked_as_one(tmp_path):
    """EVAL names a file per source: each is copied in turn, a bad line is named in its own
    file, and an id in two of them is refused."""
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "t1", "query": "2 plus 2?"}) + "\n")
    first = [{"id": "a1", "query": "What is 6 times 7?", "reference": "42",
              "metadata": {"source": "people"}}]
    second = [{"id": "b1", "query": "What is 5 + 5?", "reference": "10",
               "metadata": {"source": "templates"}}]
    for name, tasks in (("a.jsonl", first), ("b.jsonl", second), ("c.jsonl", first)):
        (tmp_path / name).write_text("".join(json.dumps(t) + "\n" for t in tasks))
    out = tmp_path / "out.jsonl"
    args = ["--train", str(tmp_path / "train.jsonl")]
    both = CliRunner().invoke(evalset, [*args, str(tmp_path / "a.jsonl"),
                                        str(tmp_path / "b.jsonl"), "-o", str(out)])
    assert both.exit_code == 0, both.output
    assert _read(out) == first + second and "2 written" in both.output
    twice = CliRunner().invoke(evalset, [*args, str(tmp_path / "a.jsonl"),
                                         str(tmp_path / "c.jsonl"), "-o", str(tmp_path / "x")])
    assert twice.exit_code == 1
    assert "c.jsonl:1: task a1 comes twice in the evaluation set" in twice.output
    assert not (tmp_path / "x").exists()


def test_the_report_gives_a_table_per_source_of_the_evaluation_set(tmp_path):
    run = tmp_path / "demo"
    run.mkdir()
    tasks = [{"id": f"p{k}", "metadata": {"source": "gsm8k-train"}} for k in range(50)] + \
        [{"id": f"t{k}", "metadata": {"source": "templates"}} for k in range(50)]
    (run / "eval-tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    levels = [{t["id"]: 0.0 for t in tasks},
              {**{f"p{k}": 1.0 if k < 20 else 0.0 for k in range(50)},
               **{f"t{k}": 1.0 for k in range(50)}}]
    for i, rewards in enumerate(levels):
        (run / f"iter-{i}").mkdir()
        (run / f"iter-{i}" / "eval-set.jsonl").write_text(_rollouts(rewards))
    assert report_main([str(run)]) == 0
    section = (run / "report.md").read_text().split("## Evaluation set")[1].split("\n## ")[0]
    people = section.split("### gsm8k-train (50 tasks)")[1].split("###")[0]
    templates = section.split("### templates (50 tasks)")[1]
    assert "| after iteration 1 | 0.400 [" in people and "+0.400 [+0." in people
    assert "| after iteration 1 | 1.000 [" in templates
