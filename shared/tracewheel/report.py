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
from pathlib import Path
from typing import NamedTuple

import click

from .cli import exit_status, tool_command
from .errors import TracewheelError
from .estimates import estimate, iterations, paired, read, task_rewards, task_solved
from .jsonl import atomic_path
from .report_agents import policies_section, verdicts_section
from .report_plots import plot

# The drift (KL(sampler || trained) per token, estimated on the sampler's tokens) above which
# an iteration's rollouts no longer describe the policy it trained. Measured on the demo (with
# the other orientation, which agrees with this one near 0): updates that helped stayed near
# 0.03; the GRPO iterations that broke the agent went past 0.2.
KL_BOUND = 0.1

TASK_FILES = [("exported", "tasks.exported.jsonl"), ("kept by trace-filter", "tasks.kept.jsonl"),
              ("made by task-augment", "tasks.augmented.jsonl"), ("training", "train.jsonl"),
              ("held out", "heldout.jsonl"),
              ("evaluation set", "eval-tasks.jsonl")]


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
    lines = [f"# Flywheel run `{run.name}`", "", *_tasks_section(run)]
    evaluations, curves = _evaluations(run)
    lines += evaluations
    lines += policies_section(run, EVAL_SETS)
    lines += verdicts_section(run, EVAL_SETS)
    lines += _iterations_section(run)
    for name, title in plot(run, curves):
        lines += [f"![{title}]({name})", ""]
    return "\n".join(lines)


def _tasks_section(run: Path) -> list[str]:
    lines = ["## Tasks", "", "| set | tasks |", "|---|---|"]
    for label, name in TASK_FILES:
        path = run / name
        lines.append(f"| {label} | {len(read(path)) if path.is_file() else '(not run)'} |")
    for step in ("export", "filter", "augment", "split"):
        line = log_line(run, step)
        if line:
            lines.append(f"\n`{line}`")
    return [*lines, ""]


def _evaluations(run: Path) -> tuple[list[str], list[tuple[str, dict[int, dict[str, float]]]]]:
    """Each evaluation's section, and its curves for the plot (a curve per source where its
    tasks name several)."""
    lines: list[str] = []
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
    return lines, curves


def _iterations_section(run: Path) -> list[str]:
    lines = ["## Iterations", "",
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
        row, warning = _iteration_row(run, i)
        lines.append(row)
        warnings += [warning] if warning else []
        # The steps' summaries go after the table: a line between rows would end it.
        said = [f"- `{line}`" for step in ("rollout", "merge", "train")
                if (line := log_line(run, f"{step}-{i}"))]
        if said:
            logs += [f"Iteration {i}:", "", *said, ""]
    lines += ["", *warnings, ""] if warnings else [""]
    return lines + logs


def _iteration_row(run: Path, i: int) -> tuple[str, str | None]:
    """Iteration ``i``'s row of the table, and its warning where its drift was out of
    bounds."""
    folder = run / f"iter-{i}"
    rollouts, samples = read(folder / "rollouts.jsonl"), read(folder / "samples.jsonl")
    metrics = read(folder / "metrics.jsonl")
    losses = [m["loss"] for m in metrics if m.get("loss") is not None]
    speeds = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s")]
    drift = [m["kl_old"] for m in metrics if m.get("kl_old") is not None]
    warning = None
    if drift and statistics.median(drift) > KL_BOUND:
        warning = (f"**Iteration {i} is out of bounds**: its typical step's kl_old was "
                   f"{statistics.median(drift):.2g} (bound {KL_BOUND}), so its rollouts no "
                   "longer described the policy it trained; lower its learning rate.")
    tail = (f"| {len(metrics)} | {losses[-1] if losses else float('nan'):.4f} | "
            f"{statistics.fmean(speeds) if speeds else 0:.0f} | "
            f"{_typical(metrics, 'kl_old')} | {_typical(metrics, 'clip_frac')} |")
    calls, n_samples, separate, merged = merge_figures(rollouts, samples)
    if not rollouts:  # a warm-up: SFT on the production traces, not on rollouts
        return f"| {i} (SFT on traces) | - | - | - | - | - -> {n_samples} | - -> {merged} " \
            f"{tail}", warning
    groups: dict[str, list] = {}
    for r in rollouts:
        groups.setdefault(r["group"], []).append(r.get("reward"))
    # groups of one (PER_TASK=1) have nothing to compare: no figure, not "all equal"
    sized = [g for g in groups.values() if len(g) > 1]
    flat = (f"{sum(1 for g in sized if None not in g and len(set(g)) == 1)} of "
            f"{len(sized)}" if sized else "- (groups of 1)")
    rewards = [r["reward"] for r in rollouts if r.get("reward") is not None]
    mean = statistics.fmean(rewards) if rewards else float("nan")
    saving = f" ({separate / merged:.2f}x)" if merged and separate else ""
    ok = sum(r.get("status") == "ok" for r in rollouts)
    return (f"| {i} | {len(rollouts)} ({ok}) | {sampled_by(samples, i - 1)} | {mean:.3f} "
            f"| {flat} | {calls} -> {n_samples} | {separate} -> {merged}{saving} {tail}"), warning


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
