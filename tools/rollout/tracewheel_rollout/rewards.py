r"""Rewards for finished rollouts: the built-ins in ``BUILT_IN`` (``boxed``: the ``\boxed{}``
value against the task's reference; ``judge``: the trace-filter judge's verdict as 1.0 or 0.0),
or a user's function.

A reward function is ``fn(task, rollout) -> float | (float, dict) | {"reward": ..., ...}``, plain
or async; ``rollout`` is the rollout record so far (``final``, ``calls``, ``status``, ...).

A built-in is one entry of ``BUILT_IN``: its name (what ``--reward`` takes), one line of help,
and a factory ``(options, engine) -> RewardFn`` called once per run; ``engine`` holds the
served endpoint's ``upstream`` URL and ``model`` once the engine is up.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tracewheel.errors import TracewheelError
from tracewheel.messages import content_text
from tracewheel.workflow import load_callable

if TYPE_CHECKING:
    from .config import RunConfig

RewardFn = Callable[[dict, dict], Awaitable[tuple[float | None, dict]]]


async def boxed(task: dict, rollout: dict) -> tuple[float | None, dict]:
    from tracewheel.answers import boxed_reward  # 17 ms: not at --help

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
            import asyncio  # running: imported by the loop already

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


def _judge_from_options(o: RunConfig, engine: dict) -> RewardFn:
    """``--reward judge``: the judge of ``--rubrics``, asked at ``--judge-base-url`` (default:
    the served engine, with its model)."""
    from tracewheel.client import Endpoint, make_client
    from tracewheel.judge import Judge, JudgeSettings, rubrics_text

    text = rubrics_text(o.rubrics)
    built: list = []
    lock = threading.Lock()

    def judge() -> Any:
        # Built on first use: by then the engine is up, and its URL and model are known.
        with lock:
            if not built:
                endpoint = Endpoint(o.judge_base_url or engine["upstream"],
                                    o.judge_model or engine["model"], o.judge_api_key,
                                    o.timeout, o.retries)
                client = make_client(endpoint)
                built.append(Judge(JudgeSettings(endpoint=endpoint, rubrics=text),
                                   lambda: client))
            return built[0]

    return judge_reward(lambda record: judge()(record))


@dataclass(frozen=True)
class BuiltIn:
    help: str
    make: Callable[[RunConfig, dict], RewardFn]


BUILT_IN: dict[str, BuiltIn] = {
    "boxed": BuiltIn("1.0 when the final answer's \\boxed{} value equals the task's reference",
                     lambda o, engine: boxed),
    "judge": BuiltIn("the judge's verdict on the rollout under --rubrics: 1.0 for keep, "
                     "0.0 for drop", _judge_from_options),
}


def reward_for(o: RunConfig, engine: dict) -> RewardFn | None:
    """The reward ``--reward`` names: a built-in, or a user's ``FILE.py:FN`` or ``MODULE:FN``;
    None without ``--reward`` (the workflow's own reward, if any, stands)."""
    if o.reward_kind is None:
        return None
    built_in = BUILT_IN.get(o.reward_kind)
    return built_in.make(o, engine) if built_in else function_reward(o.reward_kind)
