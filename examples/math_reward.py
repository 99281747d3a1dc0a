r"""The demo's reward: the right answer in ``\boxed{}`` scores 1.0, a wrong answer in ``\boxed{}``
scores FORMAT_CREDIT, no ``\boxed{}`` at all 0.0.

    rollout --workflow examples/math_agent.py:run --reward examples/math_reward.py:reward ...

The small embedded model rarely solves a grade-school problem (a few percent), so a right-or-wrong
reward gives GRPO almost no group with unequal rewards to learn from; answering in the format the
agent is asked for is within its reach, and is what production traces with a wrong format lack.
The reward info keeps ``match`` (the answer was right), so a report can count solved tasks apart
from the shaped reward.
"""

from __future__ import annotations

from typing import Any

from flywheel.answers import boxed_reward

FORMAT_CREDIT = 0.2


def reward(task: dict, rollout: dict) -> tuple[float | None, dict[str, Any]]:
    final = rollout.get("final")
    value, info = boxed_reward(final if isinstance(final, str) else str(final or ""),
                               task.get("reference"))
    if value == 0.0 and info["predicted"]:
        value = FORMAT_CREDIT
    return value, info
