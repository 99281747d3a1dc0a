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
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
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
                "SAMPLES=2", "EVAL_SAMPLES=1", "MAX_TOKENS=48", "PARAPHRASES=2", "HELDOUT=0.25",
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
    assert len(rollouts) == 2 * len(train)  # SAMPLES per training task
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
    for i, version in ((0, "smollm2-135m"), (1, str(run / "iter-1" / "ckpt"))):
        calls = [c for r in lines(run / f"iter-{i}" / "eval-set.jsonl") for c in r["calls"]]
        assert calls and {c["weight_version"] for c in calls} == {version}


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


def test_serve_phase_prints_a_server_per_model(tmp_path):
    result = make("-n", "flywheel-loop", "SERVE=phase", runs=tmp_path / "runs")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "== flywheel phase 0: serving smollm2-135m" in result.stdout
    assert "vllm-1.log" in result.stdout and "--weight-updates" not in result.stdout
    assert not (tmp_path / "runs").exists()
