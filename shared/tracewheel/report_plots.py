"""The figures of a run's report: reward per iteration, and the training curves."""

from __future__ import annotations

import statistics
from pathlib import Path

from .estimates import estimate, iterations, read


def plot(run: Path, curves: list[tuple[str, dict[int, dict[str, float]]]]
         ) -> list[tuple[str, str]]:
    """Draw the figures the run has data for; their file names and titles. No figure, and no
    panel, without data. ``curves``: each evaluation's name and its per-task rewards by
    iteration."""
    import matplotlib

    matplotlib.use("Agg")
    drawn = []
    if _reward_figure(run, curves):
        drawn.append(("reward.png", "reward per iteration"))
    if _training_figure(run):
        drawn.append(("training.png", "training"))
    return drawn


def _reward_figure(run: Path, curves: list[tuple[str, dict[int, dict[str, float]]]]) -> bool:
    """``reward.png``: each evaluation by iteration, and the training rollouts' reward; whether
    there was anything to draw."""
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    lines = [(label, [(i, e) for i, r in sorted(evals.items())
                      if (e := estimate(list(r.values())))]) for label, evals in curves]
    lines = [(label, points) for label, points in lines if points]
    train = [(i, [r["reward"] for r in read(run / f"iter-{i}" / "rollouts.jsonl")
                  if r.get("reward") is not None]) for i in iterations(run) if i > 0]
    train = [(i - 1, statistics.fmean(r)) for i, r in train if r]
    if not lines and not train:
        return False
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
    return True


def _training_figure(run: Path) -> bool:
    """``training.png``: loss (and the trained rollouts' reward) by optimizer step, the
    iterations one after another; whether there was anything to draw."""
    from matplotlib import pyplot as plt

    runs = []
    offset = 0
    for i in iterations(run):
        metrics = read(run / f"iter-{i}" / "metrics.jsonl")
        if metrics:
            steps = [offset + (m.get("step") or k + 1) for k, m in enumerate(metrics)]
            runs.append((i, steps, metrics))
            offset = steps[-1]
    if not runs:
        return False
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
    return True
