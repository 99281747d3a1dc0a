"""``python -m tracewheel.report RUN_DIR``: what a flywheel run did and whether the agent got
better, as ``RUN_DIR/report.md`` with plots (``reward.png``, ``training.png``).

It reads the files the Makefile's steps leave in the run folder (any may be missing: the
report says so): the task sets, and per iteration ``iter-N/`` the rollouts, samples, training
metrics, and each model's evaluations: on the held-out split (``iter-N/eval.jsonl``) and on
the evaluation set (``iter-N/eval-set.jsonl``); ``iter-0`` is the starting model.
"""

from __future__ import annotations

import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import click

from .cli import exit_status, tool_command
from .errors import TracewheelError
from .jsonl import atomic_path, loads

# The drift (KL(sampler || trained) per token, estimated on the sampler's tokens) above which
# an iteration's rollouts no longer describe the policy it trained. Measured on the demo (with
# the other orientation, which agrees with this one near 0): updates that helped stayed near
# 0.03; the GRPO iterations that broke the agent went past 0.2.
KL_BOUND = 0.1

TASK_FILES = [("exported", "tasks.exported.jsonl"), ("kept by trace-filter", "tasks.kept.jsonl"),
              ("made by task-augment", "tasks.augmented.jsonl"), ("training", "train.jsonl"),
              ("held out", "heldout.jsonl"),
              ("evaluation set", "eval-tasks.jsonl")]


def read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [loads(line) for line in path.read_bytes().splitlines() if line.strip()]


BOOTSTRAP = 4000  # resamples behind every interval (seeded: the same report every time)


@dataclass
class Estimate:
    """A mean with its 95% confidence interval: the percentile bootstrap over tasks, which
    stays inside the values' range (a share of right answers is never below 0) and is not
    too narrow at small n as a normal interval is."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def estimate(values: list[float]) -> Estimate | None:
    if not values:
        return None
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(0)
    means = data[rng.integers(0, len(data), size=(BOOTSTRAP, len(data)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return Estimate(float(data.mean()), float(low), float(high), len(values))


def task_rewards(rollouts: list[dict]) -> dict[str, float]:
    """Each task's mean reward over its samples (a rollout without a reward counts 0: failing
    to answer is not better than a wrong answer)."""
    by_task: dict[str, list[float]] = {}
    for r in rollouts:
        by_task.setdefault(r["task_id"], []).append(r.get("reward") or 0.0)
    return {task: statistics.fmean(values) for task, values in by_task.items()}


def task_solved(rollouts: list[dict]) -> dict[str, float]:
    """Each task's share of samples whose answer was right (``reward_info.match``), apart from a
    shaped reward's partial credit; empty when the reward does not say."""
    by_task: dict[str, list[float]] = {}
    for r in rollouts:
        match = (r.get("reward_info") or {}).get("match")
        if match is not None:
            by_task.setdefault(r["task_id"], []).append(float(match))
    return {task: statistics.fmean(values) for task, values in by_task.items()}


def iterations(run: Path) -> list[int]:
    found = [int(m.group(1)) for p in run.glob("iter-*")
             if (m := re.fullmatch(r"iter-(\d+)", p.name))]
    return sorted(found)


def log_line(run: Path, step: str) -> str | None:
    """The closing summary line a step's tool printed (kept under logs/)."""
    path = run / "logs" / f"{step}.log"
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if re.search(r" in \d", ln)]
    return lines[-1].strip() if lines else None


def merge_figures(rollouts: list[dict], samples: list[dict]) -> tuple[int, int, int, int]:
    """Calls, samples, tokens as separate calls, tokens merged."""
    calls = [c for r in rollouts if r.get("status") == "ok" for c in r.get("calls") or []]
    separate = sum(len(c["prompt_ids"]) + len(c["completion_ids"]) for c in calls)
    merged = sum(len(s["input_ids"]) for s in samples)
    return len(calls), len(samples), separate, merged


class EvalSet(NamedTuple):
    """One evaluation of every model: its rollouts file in iter-N/, its section title, its
    label in the plot, what it is; the held-out split's section shows even before it ran."""

    file: str
    title: str
    label: str
    about: str
    always: bool
    tasks: str | None = None  # its tasks, whose sources split its section into tables


EVAL_SETS = [
    EvalSet("eval.jsonl", "Held-out reward", "held-out",
            "the production tasks set aside before training (`heldout.jsonl`)", True),
    EvalSet("eval-set.jsonl", "Evaluation set", "evaluation set",
            "labelled tasks checked disjoint from every training task and paraphrase "
            "(`eval-tasks.jsonl`, from `EVAL=`), a table per source where they name several",
            False, "eval-tasks.jsonl"),
    EvalSet("test-set.jsonl", "Test set", "test set",
            "a public test set scored after the loop (`test-tasks.jsonl`, `make gsm8k-test`: a "
            "fixed sample of GSM8K's test split), reported only: never trained on, never used "
            "to choose a setting", False, "test-tasks.jsonl"),
]


def paired(after: dict[str, float], before: dict[str, float]) -> str:
    """The mean per-task change from ``before`` to ``after`` on the tasks both have, with its
    95% interval; paired, so the tasks' own difficulty cancels out."""
    common = sorted(set(before) & set(after))
    diff = estimate([after[t] - before[t] for t in common])
    return f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]" if diff else ""


def evaluation(which: EvalSet, rewards: dict[int, dict[str, float]],
               right: dict[int, dict[str, float]],
               groups: dict[str, set[str]] | None = None) -> list[str]:
    """A section: each model's share of right answers and mean reward (per task, by
    iteration), and the paired change of each from the model before it and from the start.
    Right answers come first: a reward can rise while they do not. ``groups``: where the
    tasks come from several sources (``metadata.source``), a table per source, each task's
    id under its source's name."""
    lines = [f"## {which.title}", "",
             f"Every model on {which.about}. *Right*: the share of answers that were right, "
             "where the reward says. *Reward*: mean per task (its samples averaged; no reward "
             "counts 0). 95% confidence intervals; changes are paired by task: an interval "
             "above zero is a gain the evaluation can tell from noise.", ""]
    if not groups or len(groups) < 2:
        return lines + _evaluation_table(rewards, right) + [""]
    for source, ids in groups.items():
        lines += [f"### {source} ({len(ids)} tasks)", "",
                  *_evaluation_table({i: _only(r, ids) for i, r in rewards.items()},
                                     {i: _only(r, ids) for i, r in right.items()}), ""]
    return lines


def _only(values: dict[str, float], ids: set[str]) -> dict[str, float]:
    return {task: v for task, v in values.items() if task in ids}


def _evaluation_table(rewards: dict[int, dict[str, float]],
                      right: dict[int, dict[str, float]]) -> list[str]:
    lines = ["| model | right | right: change from before | right: change from the start "
             "| reward | change from the model before | change from the start |",
             "|---|---|---|---|---|---|---|"]
    order = sorted(rewards)
    for k, i in enumerate(order):
        name = "start" if i == 0 else f"after iteration {i}"
        before = order[k - 1] if k else None
        cells = [name, str(estimate(list(right[i].values())) or ""),
                 paired(right[i], right[before]) if before is not None else "",
                 paired(right[i], right[order[0]]) if k else "",
                 str(estimate(list(rewards[i].values())) or ""),
                 paired(rewards[i], rewards[before]) if before is not None else "",
                 paired(rewards[i], rewards[order[0]]) if k else ""]
        lines.append("| " + " | ".join(cells) + " |")
    if not rewards:
        lines.append("| (no evaluation yet) | | | | | | |")
    return lines


def sources(tasks: list[dict]) -> dict[str, set[str]]:
    """The tasks' ids by their source (``metadata.source``; "other" where none is named), in
    the order the sources first appear."""
    found: dict[str, set[str]] = {}
    for task in tasks:
        source = (task.get("metadata") or {}).get("source") or "other"
        found.setdefault(str(source), set()).add(str(task.get("id")))
    return found


def report(run: Path) -> str:
    lines = [f"# Flywheel run `{run.name}`", ""]
    lines += ["## Tasks", "", "| set | tasks |", "|---|---|"]
    for label, name in TASK_FILES:
        path = run / name
        lines.append(f"| {label} | {len(read(path)) if path.is_file() else '(not run)'} |")
    for step in ("export", "filter", "augment", "split"):
        line = log_line(run, step)
        if line:
            lines.append(f"\n`{line}`")
    lines.append("")

    curves: list[tuple[str, dict[int, dict[str, float]]]] = []
    for which in EVAL_SETS:
        runs = {i: read(run / f"iter-{i}" / which.file) for i in iterations(run)}
        runs = {i: rs for i, rs in runs.items() if rs}
        rewards = {i: task_rewards(rs) for i, rs in runs.items()}
        groups = sources(read(run / which.tasks)) if which.tasks else {}
        if runs or which.always:
            lines += evaluation(which, rewards, {i: task_solved(rs) for i, rs in runs.items()},
                                groups)
        if runs and len(groups) > 1:
            curves += [(f"{which.label}: {source}",
                        {i: _only(r, ids) for i, r in rewards.items()})
                       for source, ids in groups.items()]
        elif runs:
            curves.append((which.label, rewards))
    lines += policies_section(run)
    lines += verdicts_section(run)
    lines += ["## Iterations", "",
              "*kl_old* is the drift: how far the trained policy moved from the one that sampled "
              "the iteration's rollouts (KL(sampler || trained) per token, estimated on the "
              "sampler's tokens, of its median step). Up to "
              f"{KL_BOUND} the rollouts still describe the policy being trained; above it they "
              "do not, and the update is out of bounds (lower --lr).", "",
              "*Sampled by* is the model whose weights sampled the iteration's samples, and how "
              "many versions it is behind the model trained (ASYNC=1 allows MAX_LAG).", "",
              "| iteration | rollouts (ok) | sampled by | train reward | equal-reward groups "
              "| calls -> samples | tokens separate -> merged | steps | last loss | tokens/s "
              "| kl_old | clip frac |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    warnings, logs = [], []
    for i in iterations(run):
        if i == 0:
            continue
        folder = run / f"iter-{i}"
        rollouts, samples = read(folder / "rollouts.jsonl"), read(folder / "samples.jsonl")
        metrics = read(folder / "metrics.jsonl")
        ok = sum(r.get("status") == "ok" for r in rollouts)
        rewards = [r["reward"] for r in rollouts if r.get("reward") is not None]
        groups: dict[str, list] = {}
        for r in rollouts:
            groups.setdefault(r["group"], []).append(r.get("reward"))
        # groups of one (PER_TASK=1) have nothing to compare: no figure, not "all equal"
        sized = [g for g in groups.values() if len(g) > 1]
        flat = (f"{sum(1 for g in sized if None not in g and len(set(g)) == 1)} of "
                f"{len(sized)}" if sized else "- (groups of 1)")
        calls, n_samples, separate, merged = merge_figures(rollouts, samples)
        saving = f" ({separate / merged:.2f}x)" if merged and separate else ""
        losses = [m["loss"] for m in metrics if m.get("loss") is not None]
        speeds = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s")]
        drift = [m["kl_old"] for m in metrics if m.get("kl_old") is not None]
        if drift and statistics.median(drift) > KL_BOUND:
            warnings.append(f"**Iteration {i} is out of bounds**: its typical step's kl_old "
                            f"was {statistics.median(drift):.2g} (bound {KL_BOUND}), so its "
                            "rollouts no longer described the policy it trained; lower its "
                            "learning rate.")
        tail = (f"| {len(metrics)} | {losses[-1] if losses else float('nan'):.4f} | "
                f"{statistics.fmean(speeds) if speeds else 0:.0f} | "
                f"{_typical(metrics, 'kl_old')} | {_typical(metrics, 'clip_frac')} |")
        if not rollouts:  # a warm-up: SFT on the production traces, not on rollouts
            lines.append(f"| {i} (SFT on traces) | - | - | - | - | - -> {n_samples} "
                         f"| - -> {merged} {tail}")
        else:
            mean = statistics.fmean(rewards) if rewards else float("nan")
            lines.append(f"| {i} | {len(rollouts)} ({ok}) | {sampled_by(samples, i - 1)} "
                         f"| {mean:.3f} | {flat} "
                         f"| {calls} -> {n_samples} | {separate} -> {merged}{saving} {tail}")
        # The steps' summaries go after the table: a line between rows would end it.
        said = [f"- `{line}`" for step in ("rollout", "merge", "train")
                if (line := log_line(run, f"{step}-{i}"))]
        if said:
            logs += [f"Iteration {i}:", "", *said, ""]
    lines += ["", *warnings, ""] if warnings else [""]
    lines += logs
    for name, title in plot(run, curves):
        lines += [f"![{title}]({name})", ""]
    return "\n".join(lines)


def policy_rewards(rollouts: list[dict]) -> dict[str, tuple[int, dict[str, float]]]:
    """Multi-agent: per policy (the ``policy`` of its calls), its calls and each task's mean
    reward of its agents: their own (``agent_rewards``) where the workflow gave them, else the
    rollout's (none counts 0)."""
    calls: dict[str, int] = {}
    by_task: dict[str, dict[str, list[float]]] = {}
    for r in rollouts:
        agents: dict[str, set] = {}
        for c in r.get("calls") or []:
            if c.get("policy"):
                calls[c["policy"]] = calls.get(c["policy"], 0) + 1
                agents.setdefault(c["policy"], set()).add(c.get("agent"))
        own = r.get("agent_rewards") or {}
        for policy, names in agents.items():
            values = [own[a] for a in names if own.get(a) is not None]
            reward = statistics.fmean(values) if values else (r.get("reward") or 0.0)
            by_task.setdefault(policy, {}).setdefault(r["task_id"], []).append(reward)
    return {p: (calls[p], {t: statistics.fmean(v) for t, v in tasks.items()})
            for p, tasks in by_task.items()}


def policies_section(run: Path) -> list[str]:
    """Each policy of a multi-agent run, model by model on the evaluation (the EVAL set where
    there is one): its calls, its agents' reward with the paired change from the model before,
    and the share of right answers of the rollouts it took part in."""
    which = next((w for w in reversed(EVAL_SETS)
                  if any((run / f"iter-{i}" / w.file).is_file() for i in iterations(run))),
                 None)
    if which is None:
        return []
    rows, before, first = [], {}, {}
    for i in iterations(run):
        rollouts = read(run / f"iter-{i}" / which.file)
        found = policy_rewards(rollouts)
        right = task_solved(rollouts)
        for policy, (calls, rewards) in sorted(found.items()):
            name = "start" if i == 0 else f"after iteration {i}"
            change = paired(rewards, before[policy]) if policy in before else ""
            since = paired(rewards, first[policy]) if policy in first and before.get(
                policy) is not first[policy] else ""
            rows.append(f"| {name} | {policy} | {calls} | {estimate(list(rewards.values()))} "
                        f"| {change} | {since} | {estimate(list(right.values())) or ''} |")
            before[policy] = rewards
            first.setdefault(policy, rewards)
    if not rows:
        return []
    return [f"## Policies ({which.title.lower()})", "",
            "Each policy (a LoRA adapter) of the multi-agent run: *reward* is its agents' own "
            "where the workflow rewards each agent, else the rollout's; the change is paired by "
            "task. *Right*: the answers of the rollouts it took part in.", "",
            "| model | policy | calls | reward | change from the model before | change from the "
            "start | right |", "|---|---|---|---|---|---|---|", *rows, ""]


def verdicts_section(run: Path) -> list[str]:
    """A checker's verdicts, model by model on the evaluation, where the workflow lists them
    (``metadata.verdicts``: ``round``, ``answer_right``, ``rejected``; examples/solver_checker.py):
    on the Solver's answers, its rejections of the wrong ones (recall) and of the right ones
    (false rejections); on its probes, the same; and the team's right share beside the Solver
    alone (``metadata.solver_alone_right``), paired by task."""
    which = next((w for w in reversed(EVAL_SETS)
                  if any((run / f"iter-{i}" / w.file).is_file() for i in iterations(run))),
                 None)
    rows = []
    for i in iterations(run) if which else []:
        rollouts = read(run / f"iter-{i}" / which.file)
        verdicts = [(v, r) for r in rollouts
                    for v in (r.get("metadata") or {}).get("verdicts") or []]
        if not verdicts:
            continue

        team = task_solved(rollouts)
        alone: dict[str, list[float]] = {}
        for r in rollouts:
            known = (r.get("metadata") or {}).get("solver_alone_right")
            if known is not None:
                alone.setdefault(r["task_id"], []).append(float(known))
        solo = {t: statistics.fmean(v) for t, v in alone.items()}
        name = "start" if i == 0 else f"after iteration {i}"
        rows.append(f"| {name} | {_rejected(verdicts, False, False)} "
                    f"| {_rejected(verdicts, False, True)} | {_rejected(verdicts, True, False)} "
                    f"| {_rejected(verdicts, True, True)} "
                    f"| {estimate([solo[t] for t in solo if t in team]) or '-'} "
                    f"| {paired(team, solo) or '-'} |")
    if not rows:
        return []
    return [f"## Checker verdicts ({which.title.lower()})", "",
            "What the checker rejected, model by model: of the Solver's wrong answers (recall: "
            "higher is better) and of its right ones (false rejections: lower is better), on "
            "the team's rounds and on the probes (an answer of the other kind, so that both "
            "are judged in every rollout); the team's right share against the Solver's first "
            "answer alone, paired by task.", "",
            "| model | rejected: wrong answers | rejected: right answers | probes: wrong "
            "rejected | probes: right rejected | Solver alone right | team - Solver alone |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def _rejected(verdicts: list[tuple[dict, dict]], probe: bool, right: bool) -> str:
    """The share rejected of the verdicts on probes (or not) of right (or wrong) answers."""
    picked = [float(v["rejected"]) for v, _ in verdicts
              if (v.get("round") == "probe") == probe and v.get("answer_right") is right]
    return str(estimate(picked)) if picked else "-"


def sampled_by(samples: list[dict], trained_from: int) -> str:
    """Which weights sampled the samples (their ``weight_version``: the loop numbers each
    model it serves; the oldest where a sample's calls had several), and how many versions
    behind the model ``trained_from`` that is: "model 1 (1 behind): 212"."""
    counts: dict[str, int] = {}
    for sample in samples:
        version = sample.get("weight_version")
        versions = version if isinstance(version, list) else [version]
        try:
            oldest = min(int(v) for v in versions)
        except (TypeError, ValueError):
            key = "unnumbered"
        else:
            key = f"model {oldest} ({trained_from - oldest} behind)"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k}: {n}" for k, n in sorted(counts.items())) or "-"


def compare(run: Path, base: Path) -> str:
    """Two runs of the same loop (say ASYNC=1 against the synchronous one): each model's right
    answers on each evaluation in both, and the paired change from ``base`` to ``run``."""
    ours, theirs = run.name, base.name
    if ours == theirs:  # two runs of one name (in two clones): their paths tell them apart
        ours, theirs = str(run), str(base)
    lines = [f"# `{ours}` against `{theirs}`", ""]
    for which in EVAL_SETS:
        rows = []
        for i in sorted(set(iterations(run)) & set(iterations(base))):
            mine, other = (read(r / f"iter-{i}" / which.file) for r in (run, base))
            if not mine or not other:
                continue
            a, b = task_solved(mine), task_solved(other)
            name = "start" if i == 0 else f"after iteration {i}"
            rows.append(f"| {name} | {estimate(list(b.values()))} | "
                        f"{estimate(list(a.values()))} | {paired(a, b)} |")
        if rows:
            lines += [f"## {which.title}: right", "",
                      f"| model | {theirs} | {ours} | change (paired 95%) |",
                      "|---|---|---|---|", *rows, ""]
    return "\n".join(lines)


def _typical(metrics: list[dict], key: str) -> str:
    """A telemetry figure of an iteration's typical step, the median ("-" where train had
    none to give): ``kl_old`` (how far each step's policy is from the one that sampled) and
    ``clip_frac`` (GRPO: the share of tokens whose ratio was clipped) near 0 say the iteration
    hardly moved the policy. The median, because one step's mean can be one token's: a
    trained token whose recorded logprob is not its own gives one step a kl_old of 1e4."""
    values = [m[key] for m in metrics if m.get(key) is not None]
    return f"{statistics.median(values):.2g}" if values else "-"


def plot(run: Path, curves: list[tuple[str, dict[int, dict[str, float]]]]
         ) -> list[tuple[str, str]]:
    """Draw the figures the run has data for; their file names and titles. No figure, and no
    panel, without data. ``curves``: each evaluation's name and its per-task rewards by
    iteration."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    drawn = []
    lines = [(label, [(i, e) for i, r in sorted(evals.items())
                      if (e := estimate(list(r.values())))]) for label, evals in curves]
    lines = [(label, points) for label, points in lines if points]
    train = [(i, [r["reward"] for r in read(run / f"iter-{i}" / "rollouts.jsonl")
                  if r.get("reward") is not None]) for i in iterations(run) if i > 0]
    train = [(i - 1, statistics.fmean(r)) for i, r in train if r]
    if lines or train:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, points in lines:
            below = [e.mean - e.low for _, e in points]
            above = [e.high - e.mean for _, e in points]
            ax.errorbar([i for i, _ in points], [e.mean for _, e in points],
                        yerr=[below, above], marker="o", capsize=4,
                        label=f"{label} reward (95% CI)")
        if train:
            ax.plot([i for i, _ in train], [m for _, m in train], "s--",
                    label="training rollouts (model before the iteration)")
        ax.set_xlabel("iteration (0: the starting model)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers
        ax.set_ylabel("mean reward per rollout (0 to 1)")
        ax.set_title(f"{run.name}: reward per iteration")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run / "reward.png", dpi=100)
        plt.close(fig)
        drawn.append(("reward.png", "reward per iteration"))

    runs = []
    offset = 0
    for i in iterations(run):
        metrics = read(run / f"iter-{i}" / "metrics.jsonl")
        if metrics:
            steps = [offset + (m.get("step") or k + 1) for k, m in enumerate(metrics)]
            runs.append((i, steps, metrics))
            offset = steps[-1]
    if not runs:
        return drawn
    rewarded = any(m.get("reward_mean") is not None for _, _, ms in runs for m in ms)
    fig, axes = plt.subplots(1, 2 if rewarded else 1, figsize=(10 if rewarded else 6, 4),
                             squeeze=False)
    loss_ax = axes[0][0]
    for i, steps, metrics in runs:
        loss_ax.plot(steps, [m.get("loss") for m in metrics], marker=".", label=f"iteration {i}")
    loss_ax.set_title("training loss")
    loss_ax.set_ylabel("loss per trained token (SFT: nats; GRPO: objective)")
    if rewarded:
        reward_ax = axes[0][1]
        for i, steps, metrics in runs:
            if any(m.get("reward_mean") is not None for m in metrics):
                reward_ax.plot(steps, [m.get("reward_mean") for m in metrics], marker=".",
                               label=f"iteration {i}")
        reward_ax.set_title("reward of the trained rollouts")
        reward_ax.set_ylabel("mean reward per rollout (0 to 1)")
    for ax in axes[0]:
        ax.set_xlabel("optimizer step (iterations one after another)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(run / "training.png", dpi=100)
    plt.close(fig)
    drawn.append(("training.png", "training"))
    return drawn


@tool_command("tracewheel.report")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--against", metavar="OTHER_RUN", type=click.Path(file_okay=False, path_type=Path),
              help="Compare RUN with another run of the same loop, model by model, paired by "
                   "task (printed, not written).")
def command(run: Path, against: Path | None) -> None:
    """Write RUN/report.md, the report of a `make flywheel` run (every model on the held-out
    tasks and the evaluation set, paired changes, training, policies), and print it.

    \b
    Examples:
      python -m tracewheel.report runs/demo
      python -m tracewheel.report runs/async --against runs/demo
    """
    for folder in (run, against):
        if folder is not None and not folder.is_dir():
            raise TracewheelError(f"{folder}: no such run folder")
    if against is not None:
        click.echo(compare(run, against))
        return
    text = report(run)
    with atomic_path(run / "report.md") as tmp:
        Path(tmp).write_text(text + "\n")
    click.echo(text)


def main(argv: list[str] | None = None) -> int:
    """The command's exit status (0, 1 for an error, 2 for a usage error) instead of an exit."""
    return exit_status(command, argv, "python -m tracewheel.report")


if __name__ == "__main__":
    sys.exit(main())
