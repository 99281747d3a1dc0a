"""`make flywheel`'s loop end to end on the demo database, made small: the real tools, one real
vLLM for the loop (the trained model's weights loaded into it), one real training step; then a
re-run that finds everything done and serves nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tracewheel.answers import check_answer

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")



def make(*args: str, runs: Path) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    # A make of its own, as a user's: not a sub-make of `make test` (whose MAKELEVEL and
    # MAKEFLAGS would reach it through the environment).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), f"VENV={bin_dir.parent}",
         f"RUNS={runs}", "RUN=small", *args],
        capture_output=True, text=True, env=env, timeout=1200)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("flywheel")
    refs = (ROOT / "examples" / "demo-references.jsonl").read_text().splitlines()
    (base / "refs.jsonl").write_text("\n".join(refs[:8]) + "\n")
    evaluation = (ROOT / "examples" / "math-eval.jsonl").read_text().splitlines()
    (base / "eval.jsonl").write_text("\n".join(evaluation[:6]) + "\n")
    settings = [f"REFERENCES={base / 'refs.jsonl'}", f"EVAL={base / 'eval.jsonl'}", "ITERS=1",
                "PER_TASK=2", "EVAL_PER_TASK=1", "MAX_TOKENS=48", "PARAPHRASES=2", "HELDOUT=0.25",
                "JOBS=8",
                "MAX_MODEL_LEN=2048", "TRAIN_ARGS=--lr 1e-5 --max-steps 1", "WARMUP=",
                f"REWARD={ROOT / 'tests' / 'fixtures' / 'flywheel' / 'rewards.py'}:alternate"]
    first = make("flywheel-loop", *settings, runs=base / "runs")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    return base / "runs" / "small", settings, first


def test_the_loop_leaves_every_step_and_a_report(small_run):
    run, _, first = small_run
    exported, kept = lines(run / "tasks.exported.jsonl"), lines(run / "tasks.kept.jsonl")
    train, heldout = lines(run / "train.jsonl"), lines(run / "heldout.jsonl")
    assert len(exported) > len(kept) > 0
    assert all(t.get("reference") for t in kept)
    # the warm-up learns only answers that agree with their references
    assert all(check_answer(t["answer"], t["reference"]).outcome == "agree" for t in kept)
    originals = [t for t in train if not t.get("augment")]
    assert len(originals) + len(heldout) == len(kept)
    assert not {t["id"] for t in train} & {t["id"] for t in heldout}
    for augmented in (t for t in train if t.get("augment")):
        assert set(augmented["augment"]["parents"]) <= {t["id"] for t in originals}

    rollouts = lines(run / "iter-1" / "rollouts.jsonl")
    assert len(rollouts) == 2 * len(train)  # PER_TASK per training task
    assert lines(run / "iter-1" / "samples.jsonl")
    metrics = lines(run / "iter-1" / "metrics.jsonl")
    assert len(metrics) == 1 and metrics[0]["step"] == 1
    assert (run / "iter-1" / "ckpt" / "config.json").is_file()
    for i in (0, 1):  # the starting model, then the trained one, on the same held-out tasks
        evaluation = lines(run / f"iter-{i}" / "eval.jsonl")
        assert sorted(r["task_id"] for r in evaluation) == sorted(t["id"] for t in heldout)
        assert all(r["status"] != "ok" or r["reward"] == r["sample"] % 2 for r in evaluation)
        # and on the EVAL set, checked disjoint from training, one sample per task
        eval_set = lines(run / f"iter-{i}" / "eval-set.jsonl")
        assert sorted(r["task_id"] for r in eval_set) == [f"eval-0-{k:04d}" for k in range(6)]
    assert len(lines(run / "eval-tasks.jsonl")) == 6

    report = (run / "report.md").read_text()
    assert f"| held out | {len(heldout)} |" in report
    assert "| start |" in report and "| after iteration 1 |" in report
    assert "## Evaluation set" in report and "(n=6)" in report
    assert (run / "reward.png").is_file() and (run / "training.png").is_file()
    assert "flywheel phase 1: serving" in first.stdout
    # one server for the loop: started once, the trained weights loaded into it, and every call
    # marked with the version of the weights that served it
    assert "one vLLM for the whole loop" in first.stdout
    assert first.stderr.count("vLLM ready at") == 1, first.stderr[-3000:]
    assert "loaded in" in (run / "logs" / "load-1.log").read_text()
    for i, version in ((0, "0"), (1, "1")):
        calls = [c for r in lines(run / f"iter-{i}" / "eval-set.jsonl") for c in r["calls"]]
        assert calls and {c["weight_version"] for c in calls} == {version}


def test_async_trains_while_the_server_rolls_out_on_the_model_before(small_run):
    """ASYNC=1: iteration 2 learns from model 0's rollouts (one version behind model 1, the
    bound), made while model 1 trained; every sample's lag is within the bound."""
    _, settings, _ = small_run
    runs = small_run[0].parent.parent / "async-runs"
    settings = [s for s in settings if not s.startswith(("ITERS=", "TRAIN_ARGS="))]
    result = make("flywheel-loop", *settings, "ITERS=2", "ASYNC=1", "MAX_LAG=1",
                  "TRAIN_ARGS=--lr 1e-5 --max-steps 1 --allow-empty", runs=runs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    run = runs / "small"
    assert result.stderr.count("vLLM ready at") == 1
    assert "== flywheel iteration 1: training, while model 0 serves:" in result.stdout
    assert "iter-2/rollouts.jsonl" in result.stdout.split("iteration 1: training, while")[1] \
        .splitlines()[0]
    for i in (1, 2):
        samples = lines(run / f"iter-{i}" / "samples.jsonl")
        assert samples and {s["weight_version"] for s in samples} == {"0"}
    # one model's rollouts for two iterations: each iteration its own draws, not the same twice
    draws = [[c["completion_ids"] for r in lines(run / f"iter-{i}" / "rollouts.jsonl")
              for c in r["calls"]] for i in (1, 2)]
    assert draws[0] != draws[1]
    log = (run / "logs" / "train-2.log").read_text()
    assert "versions behind: 1:" in log and "older than --max-lag" not in log
    for i in (0, 1, 2):  # each evaluation on its own model
        calls = [c for r in lines(run / f"iter-{i}" / "eval-set.jsonl") for c in r["calls"]]
        assert {c["weight_version"] for c in calls} == {str(i)}
    assert (run / "report.md").is_file()


def test_a_rerun_finds_the_loop_done_and_serves_nothing(small_run):
    run, settings, _ = small_run
    before = (run / "iter-1" / "metrics.jsonl").stat().st_mtime_ns
    again = make("flywheel-loop", *settings, runs=run.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "serving" not in again.stdout
    assert (run / "iter-1" / "metrics.jsonl").stat().st_mtime_ns == before


def test_make_n_prints_the_loop_and_starts_nothing(tmp_path):
    """`make -n` runs a recipe that calls $(MAKE) all the same: the loop must not serve."""
    result = make("-n", "flywheel-loop", runs=tmp_path / "runs")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "== flywheel phase 0: serving smollm2-135m" in out
    assert "ENDPOINT=<its base URL>" in out and "trace-filter" in out and "train --model" in out
    assert not (tmp_path / "runs").exists()  # nothing made, not even the run's folder
    assert "vLLM ready" not in out + result.stderr
    assert "--weight-updates" in out and "--load-into" in out  # one server: weights loaded


@pytest.mark.parametrize("settings", [[], ["ASYNC=1"], ["SERVE=phase"]],
                         ids=["once", "async", "phase"])
def test_make_n_plans_every_iteration(tmp_path, settings):
    """Before: iteration 2's rollouts needed iteration 1's model, which make could not plan
    through the same % rule a second time ("No rule to make target")."""
    result = make("-n", "flywheel-loop", "ITERS=3", *settings, runs=tmp_path / "runs")
    assert result.returncode == 0, result.stderr[-3000:]
    for i in (1, 2, 3):
        assert f"--out {tmp_path}/runs/small/iter-{i}/ckpt" in result.stdout
    for i in (2, 3):
        assert f"-o {tmp_path}/runs/small/iter-{i}/rollouts.jsonl" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_the_old_names_of_the_per_task_counts_still_work(tmp_path):
    """SAMPLES, EVAL_SAMPLES and EVAL_SET_SAMPLES became PER_TASK, EVAL_PER_TASK and
    EVAL_SET_PER_TASK (rollout's --per-task): the old names still set them, with a warning
    naming the new one, once; the new name wins where both are given."""
    def commands(*settings: str) -> tuple[dict[str, str], str]:
        result = make("-n", "flywheel-loop", "ITERS=2", *settings, runs=tmp_path / "runs")
        assert result.returncode == 0, result.stderr[-3000:]
        found = {}
        for line in result.stdout.splitlines():
            for goal in ("iter-2/rollouts", "iter-1/eval", "iter-1/eval-set"):
                if "rollout -w" in line and f"/{goal}.jsonl " in line + " ":
                    found[goal] = line.split(" -n ")[1].split()[0]
        return found, result.stderr

    found, warned = commands("SAMPLES=3", "EVAL_SAMPLES=2", "EVAL_SET_SAMPLES=4")
    assert found == {"iter-2/rollouts": "3", "iter-1/eval": "2", "iter-1/eval-set": "4"}
    assert warned.count("SAMPLES is now called PER_TASK") == 1
    assert "EVAL_SET_SAMPLES is now called EVAL_SET_PER_TASK" in warned
    found, _ = commands("SAMPLES=3", "PER_TASK=5")
    assert found["iter-2/rollouts"] == "5"


def test_grpo_on_groups_of_one_is_refused_before_anything_runs(tmp_path):
    """The loop's default is one rollout per task (rejection sampling); GRPO needs groups."""
    refused = make("-n", "flywheel-loop", "ALGO=grpo", runs=tmp_path / "runs")
    assert refused.returncode != 0 and "ALGO=grpo needs PER_TASK=2 or more" in refused.stderr
    assert make("-n", "flywheel-loop", "ALGO=grpo", "PER_TASK=2",
                runs=tmp_path / "runs").returncode == 0
    assert not (tmp_path / "runs").exists()


def test_policies_print_one_server_with_an_adapter_per_policy(tmp_path):
    """Multi-agent (POLICIES): one vLLM with LoRA; each model's adapters loaded by policy
    name; rollouts route each agent to its policy; train writes an adapter per policy."""
    result = make("-n", "flywheel-loop", "POLICIES=Solver=solver,Checker=checker", "WARMUP=",
                  "WORKFLOW=examples/solver_checker.py:run", runs=tmp_path / "runs")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "--lora-rank 8" in out and "--weight-updates" not in out
    for k in (0, 1):
        for policy in ("solver", "checker"):
            assert (f"iter-{k}/adapters/{policy} --load-into http://127.0.0.1:PORT/v1 "
                    f"--adapter {policy}") in out
    assert "--policy Solver=solver,Checker=checker" in out
    assert "--init-adapters" in out and "iter-1/adapters" in out
    refused = make("-n", "flywheel-loop", "POLICIES=Solver=solver", runs=tmp_path / "runs")
    assert refused.returncode != 0 and "POLICIES needs SERVE=once" in refused.stderr


def test_serve_phase_prints_a_server_per_model(tmp_path):
    result = make("-n", "flywheel-loop", "SERVE=phase", runs=tmp_path / "runs")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "== flywheel phase 0: serving smollm2-135m" in result.stdout
    assert "vllm-1.log" in result.stdout and "--weight-updates" not in result.stdout
    assert not (tmp_path / "runs").exists()
    refused = make("-n", "flywheel-loop", "ASYNC=1", "SERVE=phase", runs=tmp_path / "runs")
    assert refused.returncode != 0 and "ASYNC=1 needs SERVE=once" in refused.stderr
