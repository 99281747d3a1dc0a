"""What the reports stand on: a run's files read, and means with their 95% intervals, alone or
paired by task (``report``, ``gate``, ``online_report``, ``bench/sweep_train.py``)."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from .jsonl import loads


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


def paired(after: dict[str, float], before: dict[str, float]) -> str:
    """The mean per-task change from ``before`` to ``after`` on the tasks both have, with its
    95% interval; paired, so the tasks' own difficulty cancels out."""
    common = sorted(set(before) & set(after))
    diff = estimate([after[t] - before[t] for t in common])
    return f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]" if diff else ""
