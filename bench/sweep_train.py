"""The sweep that chose the demo's training defaults: each setting trains the same rollouts, and
each trained model is scored on the same evaluation set, paired against the model that sampled
them. A setting is any train options: rejection sampling (``--algo sft --min-reward 1``), GRPO
at several learning rates, and so on.

It reads a run folder of `make flywheel` (ITERS=2 or more): the model after iteration N-1
(``iter-{N-1}/ckpt``), the rollouts it made (``iter-N/rollouts.jsonl``, merged as
``iter-N/samples.jsonl``), the evaluation tasks (``eval-tasks.jsonl``) and that model's own
evaluation (``iter-{N-1}/eval-set.jsonl``). For each setting: ``train`` with it,
then the trained model served by vLLM and rolled out on the evaluation tasks with the run's
seeds, so each task's draws are the same as the baseline's.

Printed per setting: the share of right answers (what counts) and its paired change from the
sampling model with a 95% interval, overall and per source of the evaluation tasks
(``metadata.source``), GRPO's telemetry (the median and the last step's ``kl_old``: how far the
steps moved from the sampler; the mean ``clip_frac``), steps and training seconds, and the
paired change from the first setting (rejection sampling, by default) on the same tasks. Evaluations
are greedy where the run's were (``--temperature``, the loop's EVAL_TEMPERATURE).

    make sweep RUN=demo ITER=2                                  # ~7 min per setting
    make sweep RUN=demo SWEEP_ARGS='--setting "grpo-3e-5=--algo grpo --lr 3e-5"'

`make sweep` passes the loop's own rollout settings (workflow, reward, tokens, seed: the
variables of flywheel.mk), so the sweep scores models the way the run did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracewheel.estimates import estimate, paired, read, task_rewards, task_solved
from tracewheel.report import sources
from tracewheel_rollout.rewards import function_reward

BIN = Path(sys.executable).parent

# name=train options; each is added to the fixed ones below. Rejection sampling (the loop's
# default), then GRPO over the learning rate (1e-6 is the peers' for full fine-tuning), the
# normalisation (DAPO's token mean, the GRPO paper's sample mean, Dr. GRPO's constant with
# r - mean advantages), clip-higher (DAPO's 0.28), a learning-rate warm-up and a KL penalty.
# Groups whose rewards are all equal are always dropped by train (their advantages are 0) and
# counted. The group size is the run's PER_TASK, or fewer: a setting that begins with
# "group=K" trains on each group's first K samples (its draws 0 to K-1).
SETTINGS = [
    "rft-1e-5=--algo sft --min-reward 1 --lr 1e-5",
    "grpo-1e-6=--algo grpo --lr 1e-6",
    "grpo-3e-6=--algo grpo --lr 3e-6",
    "grpo-1e-5=--algo grpo --lr 1e-5",
    "seq-3e-6=--algo grpo --lr 3e-6 --loss-norm sequence",
    "drgrpo-1e-5=--algo grpo --lr 1e-5 --loss-norm constant --adv-norm mean",
    "ch-3e-6=--algo grpo --lr 3e-6 --clip-high 0.28",
    "warm-1e-5=--algo grpo --lr 1e-5 --warmup-steps 5",
    "kl-1e-5=--algo grpo --lr 1e-5 --kl-coef 0.04",
    "g2-1e-5=group=2 --algo grpo --lr 1e-5",
]
FIXED = ["--allow-empty"]
# The loop's rollout settings, as `make sweep` passes them from tracewheel.mk.
ROLLOUT_OPTIONS = ("workflow", "reward", "per-task", "jobs", "max-tokens", "seed", "temperature")


def evaluate(model: Path, tasks: Path, out: Path, log: Path, args: argparse.Namespace
             ) -> list[dict]:
    """The model on the evaluation tasks, as `make flywheel` scores it."""
    rollout = [BIN / "rollout", "-w", args.workflow, "-n", args.per_task, "-j", args.jobs,
               "--reward", args.reward, "--max-tokens", args.max_tokens, "--seed", args.seed,
               "--temperature", args.temperature,
               "--base-url", "$OPENAI_BASE_URL", "--model", "$TRACEWHEEL_MODEL", tasks, "-o", out]
    script = " ".join(shlex.quote(str(a)) if not str(a).startswith("$") else f'"{a}"'
                      for a in rollout)
    with log.open("a") as err:
        subprocess.run([BIN / "python", "-m", "tracewheel.vllm", model, "--log-file",
                        log.with_suffix(".vllm.log"), "--exec", "sh", "-c", script],
                       check=True, stderr=err)
    return read(out)


def rescore(rollouts: list[dict], tasks: dict[str, dict], spec: str) -> None:
    """Each rollout's reward again, by the reward function ``spec`` (FILE.py:FN or MODULE:FN)."""
    score = function_reward(spec)
    for r in rollouts:
        r["reward"], r["reward_info"] = asyncio.run(score(tasks[r["task_id"]], r))


def _drift(steps: list[dict]) -> tuple[float, float]:
    """The median and the last step's ``kl_old``: how far the steps moved from the sampler."""
    values = [m["kl_old"] for m in steps if m.get("kl_old") is not None]
    return (statistics.median(values), values[-1]) if values else (float("nan"), float("nan"))


def first_draws(samples: Path, k: int, out: Path) -> Path:
    """``samples`` with only each group's draws 0 to k-1 (a smaller group from the same run)."""
    kept = [r for r in read(samples) if int(r.get("sample") or 0) < k]
    out.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return out


def _share(right: dict[str, float], ids: set[str]) -> dict[str, float]:
    return {t: v for t, v in right.items() if t in ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run folder of make flywheel")
    parser.add_argument("--iteration", type=int, default=2, help="the iteration to redo")
    parser.add_argument("--setting", action="append", help="NAME=TRAIN OPTIONS (repeatable)")
    parser.add_argument("--tasks", type=int, help="only the first N evaluation tasks")
    parser.add_argument("--workdir", type=Path, help="keep checkpoints and logs here")
    for option in ROLLOUT_OPTIONS:
        parser.add_argument(f"--{option}", required=True, help="as the run's rollouts had it")
    args = parser.parse_args()
    run, n = args.run, args.iteration
    model, samples = run / f"iter-{n - 1}" / "ckpt", run / f"iter-{n}" / "samples.jsonl"
    tasks, base_eval = run / "eval-tasks.jsonl", run / f"iter-{n - 1}" / "eval-set.jsonl"
    for path in (model, samples, tasks, base_eval):
        if not path.exists():
            sys.exit(f"sweep_train: {path} is missing: run `make flywheel ITERS={n}` first")
    chosen = read(tasks)[:args.tasks] if args.tasks else read(tasks)
    ids = {t["id"] for t in chosen}
    base = [r for r in read(base_eval) if r["task_id"] in ids]
    if ":" in args.reward:  # a reward function: score the baseline with it too (--reward may
        rescore(base, {t["id"]: t for t in chosen}, args.reward)  # differ from the run's)
    base_reward, base_right = task_rewards(base), task_solved(base)
    by_source = sources(chosen)
    print(f"model {model} on {len(base_reward)} evaluation tasks: reward "
          f"{estimate(list(base_reward.values()))}, right "
          f"{estimate(list(base_right.values()))}")
    for source, ids in by_source.items():
        print(f"  {source} ({len(ids)}): right {estimate(list(_share(base_right, ids).values()))}")
    trained = read(samples)
    print(f"trained on {samples}: {len(trained)} samples of "
          f"{len({r.get('group') for r in trained})} groups")
    columns = "".join(f" {source[:14] + ' right':>20} {'change (95% CI)':>26}"
                      for source in by_source)
    print(f"{'setting':<12} {'right':>6} {'change (95% CI)':>26}{columns} "
          f"{'vs the first setting':>26} {'kl_old med':>10} {'last':>8} {'clip':>6} "
          f"{'steps':>5} {'train s':>7}")
    first: dict[str, float] | None = None  # the first setting's right answers, per task
    with tempfile.TemporaryDirectory(prefix="sweep-train-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        tasks = work / "eval-tasks.jsonl"
        tasks.write_text("".join(json.dumps(t) + "\n" for t in chosen))
        for setting in args.setting or SETTINGS:
            name, _, options = setting.partition("=")
            out, log = work / name, work / f"{name}.log"
            words, data = shlex.split(options), samples
            if words and words[0].startswith("group="):
                data = first_draws(samples, int(words.pop(0)[6:]), work / f"{name}.samples.jsonl")
            started = time.perf_counter()
            with log.open("w") as err, (work / f"{name}.metrics.jsonl").open("w") as metrics:
                subprocess.run([BIN / "train", "--model", model, *FIXED, "--seed", args.seed,
                                *words, "--out", out, data], check=True, stdout=metrics,
                               stderr=err)
            seconds = time.perf_counter() - started
            steps = read(work / f"{name}.metrics.jsonl")
            rollouts = evaluate(out, tasks, work / f"{name}.eval.jsonl", log, args)
            right = task_solved(rollouts)
            median, last = _drift(steps)
            clips = [m["clip_frac"] for m in steps if m.get("clip_frac") is not None]
            clip = statistics.fmean(clips) if clips else float("nan")  # GRPO only
            per_source = "".join(
                f" {estimate(list(_share(right, ids).values())).mean:>20.3f} "
                f"{paired(_share(right, ids), _share(base_right, ids)):>26}"
                for ids in by_source.values())
            first = right if first is None else first
            print(f"{name:<12} {estimate(list(right.values())).mean:>6.3f} "
                  f"{paired(right, base_right):>26}{per_source} {paired(right, first):>26} "
                  f"{median:>10.1e} {last:>8.1e} {clip:>6.3f} {len(steps):>5} {seconds:>7.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
