"""The multi-agent sections of a run's report: each policy model by model, and a checker's
verdicts (``python -m tracewheel.report``)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .estimates import estimate, iterations, paired, read, task_solved


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


def policies_section(run: Path, sets: Sequence[Any]) -> list[str]:
    """Each policy of a multi-agent run, model by model on the last of ``sets`` (the report's
    evaluations) that the run has: its calls, its agents' reward with the paired change from
    the model before, and the share of right answers of the rollouts it took part in."""
    which = _latest(run, sets)
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


def verdicts_section(run: Path, sets: Sequence[Any]) -> list[str]:
    """A checker's verdicts, model by model on the evaluation, where the workflow lists them
    (``metadata.verdicts``: ``round``, ``answer_right``, ``rejected``; examples/solver_checker.py):
    on the Solver's answers, its rejections of the wrong ones (recall) and of the right ones
    (false rejections); on its probes, the same; and the team's right share beside the Solver
    alone (``metadata.solver_alone_right``), paired by task."""
    which = _latest(run, sets)
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


def _latest(run: Path, sets: Sequence[Any]) -> Any:
    """The last of the evaluations ``sets`` (``report.EVAL_SETS``) that some model of the run
    was scored on, or None."""
    return next((w for w in reversed(sets)
                 if any((run / f"iter-{i}" / w.file).is_file() for i in iterations(run))), None)


def _rejected(verdicts: list[tuple[dict, dict]], probe: bool, right: bool) -> str:
    """The share rejected of the verdicts on probes (or not) of right (or wrong) answers."""
    picked = [float(v["rejected"]) for v, _ in verdicts
              if (v.get("round") == "probe") == probe and v.get("answer_right") is right]
    return str(estimate(picked)) if picked else "-"
