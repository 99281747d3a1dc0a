r"""Rewards for finished rollouts: ``boxed`` (the ``\boxed{}`` value against the task's
reference), ``judge`` (the trace-filter judge's verdict as 1.0 or 0.0), or a user's function.

A reward function is ``fn(task, rollout) -> float | (float, dict) | {"reward": ..., ...}``, plain
or async; ``rollout`` is the rollout record so far (``final``, ``calls``, ``status``, ...).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from tracewheel.answers import boxed_reward
from tracewheel.errors import TracewheelError
from tracewheel.messages import content_text
from tracewheel.workflow import load_callable

RewardFn = Callable[[dict, dict], Awaitable[tuple[float | None, dict]]]


async def boxed(task: dict, rollout: dict) -> tuple[float | None, dict]:
    return boxed_reward(content_text(rollout.get("final")), task.get("reference"))


def tool_trajectory(calls: list[dict]) -> list[dict]:
    """The tool calls a rollout made, with the results the model was then shown."""
    results = {m.get("tool_call_id"): m.get("content") for call in calls
               for m in call.get("messages") or [] if m.get("role") == "tool"}
    trajectory = []
    for call in calls:
        for tc in (call.get("output") or {}).get("tool_calls") or []:
            fn = tc.get("function") or {}
            trajectory.append({"type": "tool", "name": fn.get("name"),
                               "arguments": fn.get("arguments"),
                               "result": results.get(tc.get("id"))})
    return trajectory


def judge_reward(judge: Any) -> RewardFn:
    """The trace-filter judge as a reward: keep 1.0, drop 0.0, no verdict None."""
    from tracewheel.judge import VerdictError

    async def score(task: dict, rollout: dict) -> tuple[float | None, dict]:
        record = {"query": task.get("query"), "messages": task.get("messages") or [],
                  "answer": content_text(rollout.get("final")) if rollout.get("final") is not None
                  else None,
                  "trajectory": tool_trajectory(rollout.get("calls") or []),
                  "reference": task.get("reference"), "feedback": []}
        try:
            verdict = await asyncio.to_thread(judge, record)
        except VerdictError as err:
            return None, {"method": "judge", "error": str(err)}
        reward = 1.0 if verdict["verdict"] == "keep" else 0.0
        return reward, {"method": "judge", **verdict}

    return score


def function_reward(spec: str) -> RewardFn:
    fn = load_callable(spec, "reward")

    async def score(task: dict, rollout: dict) -> tuple[float | None, dict]:
        value = fn(task, rollout)
        if inspect.isawaitable(value):
            value = await value
        info: dict = {"method": spec}
        if isinstance(value, tuple):
            value, extra = value
            info.update(extra or {})
        elif isinstance(value, dict):
            info.update({k: v for k, v in value.items() if k != "reward"})
            value = value.get("reward")
        if value is not None and not isinstance(value, (int, float)):
            raise TracewheelError(f"reward {spec!r} returned {type(value).__name__}, not a number")
        return (None if value is None else float(value)), info

    return score
