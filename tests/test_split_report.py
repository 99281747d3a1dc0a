"""The flywheel's own steps: the held-out split (stable, no leaks through augmented tasks) and the
run report (figures read back from a run folder, plots written)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tracewheel.report import main as report_main
from tracewheel.split import held_out
from tracewheel.split import main as split


def task(i, **extra):
    return {"id": f"t{i}", "query": f"What is {i} + {i}?", "reference": str(2 * i), **extra}


def jsonl(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def run_split(tmp_path, records, *args):
    held = tmp_path / "heldout.jsonl"
    result = CliRunner().invoke(split, ["--held-out", str(held), *args], input=jsonl(records))
    assert result.exit_code == 0, result.output
    train = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    evaluation = [json.loads(line) for line in held.read_text().splitlines()]
    return train, evaluation, result


def test_split_is_stable_and_sized_by_fraction(tmp_path):
    originals = [task(i) for i in range(400)]
    train, evaluation, _ = run_split(tmp_path, originals, "--fraction", "0.25")
    assert len(train) + len(evaluation) == 400
    assert 70 <= len(evaluation) <= 130
    assert not {t["id"] for t in train} & {t["id"] for t in evaluation}
    # The same task is held out whatever else the input holds (and in whatever order).
    _, again, _ = run_split(tmp_path, list(reversed(originals[:100])), "--fraction", "0.25")
    assert {t["id"] for t in again} == {t["id"] for t in evaluation if int(t["id"][1:]) < 100}
    _, other_seed, _ = run_split(tmp_path, originals, "--fraction", "0.25", "--seed", "1")
    assert {t["id"] for t in other_seed} != {t["id"] for t in evaluation}


def test_augmented_children_of_held_out_tasks_never_reach_training(tmp_path):
    originals = [task(i) for i in range(40)]
    out = [t["id"] for t in originals if held_out(t["id"], 0.5, 0)]
    kept = [t["id"] for t in originals if not held_out(t["id"], 0.5, 0)]
    assert out and kept
    children = [task(100 + k, augment={"method": "paraphrase", "parents": [parent]})
                for k, parent in enumerate(out[:3] + kept[:3])]
    train, evaluation, result = run_split(tmp_path, originals + children, "--fraction", "0.5")
    train_ids = {t["id"] for t in train}
    assert {c["id"] for c in children[3:]} <= train_ids  # children of training tasks train
    assert not {c["id"] for c in children[:3]} & train_ids  # children of held-out ones do not
    assert not {c["id"] for c in children} & {t["id"] for t in evaluation}
    assert "3 leaks dropped" in result.stderr


def test_split_names_the_bad_line(tmp_path):
    held = tmp_path / "heldout.jsonl"
    result = CliRunner().invoke(split, ["--held-out", str(held)],
                                input=jsonl([task(1)]) + "{not json\n")
    assert result.exit_code != 0
    assert "<stdin>:2: invalid JSON" in result.output
    assert not held.exists()  # no partial file under the final name


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonl(records))


def rollout(task_id, reward, group="g"):
    return {"id": f"r-{task_id}-{reward}", "task_id": task_id, "group": f"{group}-{task_id}",
            "status": "ok", "reward": reward, "reward_info": {"match": reward == 1.0},
            "calls": [{"prompt_ids": [1, 2, 3], "completion_ids": [4, 5]}]}


def test_report_reads_a_run_folder_back(tmp_path):
    run = tmp_path / "demo"
    write(run / "tasks.exported.jsonl", [task(i) for i in range(10)])
    write(run / "train.jsonl", [task(i) for i in range(6)])
    write(run / "heldout.jsonl", [task(i) for i in range(6, 10)])
    write(run / "iter-0" / "eval.jsonl", [rollout(f"t{i}", 0.0) for i in range(6, 10)])
    write(run / "iter-1" / "eval.jsonl",
          [rollout(f"t{i}", 1.0 if i < 8 else 0.0) for i in range(6, 10)])
    write(run / "iter-1" / "rollouts.jsonl",
          [rollout("t0", 1.0), rollout("t0", 0.0), rollout("t1", 1.0), rollout("t1", 1.0)])
    write(run / "iter-1" / "samples.jsonl",
          [{"input_ids": [1, 2, 3, 4, 5], "weight_version": "0"}] * 4)
    write(run / "iter-1" / "metrics.jsonl",
          [{"step": 1, "loss": 0.5, "tokens_per_s": 100.0, "reward_mean": 0.75}])
    (run / "logs").mkdir()
    (run / "logs" / "export.log").write_text("trace-export: 10 read, 10 written in 0.1 s\n")

    assert report_main([str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "| exported | 10 |" in text
    assert "| held out | 4 |" in text
    assert "| kept by trace-filter | (not run) |" in text
    assert "| start | 0.000" in text
    assert "| after iteration 1 | 0.500" in text
    assert "+0.500" in text  # paired change from the start
    after = next(line for line in text.splitlines() if line.startswith("| after iteration 1"))
    # the share right, first; its interval stays inside [0, 1] (a normal one was -0.066..1.066)
    assert after.split(" | ")[1] == "0.500 [0.000, 1.000] (n=4)"
    assert "1 of 2" in text  # t1's group has equal rewards
    assert "4 -> 4" in text and "20 -> 20" in text  # calls -> samples, tokens
    assert "| model 0 (0 behind): 4 |" in text  # which weights sampled them
    assert "trace-export: 10 read" in text
    assert (run / "reward.png").stat().st_size > 1000
    assert (run / "training.png").stat().st_size > 1000

    # rejection sampling's one rollout per task: no group to compare, and no "all equal" figure
    write(run / "iter-1" / "rollouts.jsonl", [rollout("t0", 1.0), rollout("t1", 1.0)])
    assert report_main([str(run)]) == 0
    row = next(line for line in (run / "report.md").read_text().splitlines()
               if line.startswith("| 1 | 2 (2)"))
    assert "| - (groups of 1) |" in row


def test_report_compares_two_runs_paired_by_task(tmp_path, capsys):
    """ASYNC=1 against the synchronous loop: the same tasks, each model's right answers."""
    for name, right in (("sync", 3), ("async", 2)):
        run = tmp_path / name
        write(run / "iter-1" / "eval-set.jsonl",
              [rollout(f"t{i}", 1.0 if i < right else 0.0) for i in range(4)])
    assert report_main([str(tmp_path / "async"), "--against", str(tmp_path / "sync")]) == 0
    out = capsys.readouterr().out
    assert "| model | sync | async | change (paired 95%) |" in out
    assert "| after iteration 1 | 0.750 [0.250, 1.000] (n=4) | 0.500 " in out
    assert "-0.250 [-0.750, +0.000]" in out
    assert not (tmp_path / "async" / "report.md").exists()  # printed, not written
    assert report_main([str(tmp_path / "async"), "--against", str(tmp_path / "no")]) == 1


def test_report_shows_what_a_checker_rejected_and_the_team_beside_the_solver_alone(tmp_path):
    def checked(task_id, first_right, final_right, rejected_wrong):
        r = rollout(task_id, 1.0 if final_right else 0.0)
        verdicts = [{"round": 0, "answer_right": first_right,
                     "rejected": rejected_wrong and not first_right}]
        if not first_right and rejected_wrong:
            verdicts.append({"round": 1, "answer_right": final_right, "rejected": False})
        verdicts.append({"round": "probe", "answer_right": not final_right,
                         "rejected": final_right})
        r["metadata"] = {"verdicts": verdicts, "solver_alone_right": first_right}
        return r

    run = tmp_path / "agents"
    # the start accepts everything; after iteration 1 it sends the two wrong first answers
    # back, and the Solver gets them right the second time
    write(run / "iter-0" / "eval-set.jsonl",
          [checked(f"t{i}", i < 2, i < 2, False) for i in range(4)])
    write(run / "iter-1" / "eval-set.jsonl",
          [checked(f"t{i}", i < 2, True, True) for i in range(4)])
    assert report_main([str(run)]) == 0
    text = (run / "report.md").read_text()
    section = text.split("## Checker verdicts (evaluation set)")[1].split("\n## ")[0]
    start = next(line for line in section.splitlines() if line.startswith("| start |"))
    assert start.split(" | ")[1:3] == ["0.000 [0.000, 0.000] (n=2)",
                                       "0.000 [0.000, 0.000] (n=2)"]
    after = next(line for line in section.splitlines()
                 if line.startswith("| after iteration 1 |"))
    # both wrong first answers rejected, no right one; the team 1.0 where the Solver alone
    # was 0.5
    assert after.split(" | ")[1:3] == ["1.000 [1.000, 1.000] (n=2)",
                                       "0.000 [0.000, 0.000] (n=4)"]
    assert after.endswith("| 0.500 [0.000, 1.000] (n=4) | +0.500 [+0.000, +1.000] |")


def test_report_shows_each_policy_of_a_multi_agent_run(tmp_path):
    def two_agent(task_id, solved, checked):
        r = rollout(task_id, solved)
        r["calls"] = [{"agent": "Solver", "policy": "solver", "prompt_ids": [1],
                       "completion_ids": [2]},
                      {"agent": "Checker", "policy": "checker", "prompt_ids": [1],
                       "completion_ids": [2]}]
        r["agent_rewards"] = {"Solver": solved, "Checker": checked}
        return r

    run = tmp_path / "agents"
    write(run / "iter-0" / "eval-set.jsonl", [two_agent(f"t{i}", 0.0, 0.0) for i in range(4)])
    write(run / "iter-1" / "eval-set.jsonl",
          [two_agent(f"t{i}", 1.0, 1.0 if i < 2 else 0.0) for i in range(4)])
    write(run / "iter-2" / "eval-set.jsonl",
          [two_agent(f"t{i}", 1.0, 1.0 if i < 3 else 0.0) for i in range(4)])
    assert report_main([str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "## Policies (evaluation set)" in text
    assert "| start | checker | 4 | 0.000 [0.000, 0.000] (n=4) |  |" in text
    assert "| after iteration 1 | solver | 4 | 1.000 [1.000, 1.000] (n=4) | +1.000" in text
    assert "| after iteration 1 | checker | 4 | 0.500 [0.000, 1.000] (n=4) | +0.500" in text
    # iteration 2 against iteration 1, then against the start
    assert "| after iteration 2 | checker | 4 | 0.750 [0.250, 1.000] (n=4) | +0.250 [+0.000, " \
           "+0.750] | +0.750 [+0.250, +1.000] |" in text


def test_report_refuses_a_missing_folder(tmp_path, capsys):
    assert report_main([str(tmp_path / "nope")]) == 1
    assert "no such run folder" in capsys.readouterr().err


def _png_width(path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the IHDR chunk's width


def test_report_draws_no_empty_panel(tmp_path):
    run = tmp_path / "sft"
    write(run / "heldout.jsonl", [task(i) for i in range(4)])
    write(run / "iter-0" / "eval.jsonl", [rollout(f"t{i}", 0.0) for i in range(4)])
    assert report_main([str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "training.png" not in text and not (run / "training.png").exists()  # no training
    # An SFT warm-up has no reward: the training figure is its loss alone, one panel.
    write(run / "iter-1" / "metrics.jsonl", [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}])
    assert report_main([str(run)]) == 0
    assert "![training](training.png)" in (run / "report.md").read_text()
    assert _png_width(run / "training.png") == 600
    write(run / "iter-2" / "metrics.jsonl", [{"step": 1, "loss": 0.1, "reward_mean": 0.5}])
    assert report_main([str(run)]) == 0
    assert _png_width(run / "training.png") == 1000  # loss and reward side by side
