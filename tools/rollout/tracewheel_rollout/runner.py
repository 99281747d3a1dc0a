"""Running workflows: N rollouts per task, a bounded number at once, each in its own recorded
session, with a timeout, then a reward; in this process or as Ray tasks."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tracewheel.ids import stable_id
from tracewheel.workflow import Handle, Result, as_result, call_workflow, load_workflow

from .rewards import RewardFn

# How many records, per slot, may wait behind a slow rollout to be written in order; past that
# new rollouts wait too (a 600-s rollout at -j 16 lets 256 others finish meanwhile).
REORDER_WINDOW = 16

# The fields of a recorded call that go into the rollout record (docs/architecture.md).
CALL_FIELDS = ("id", "index", "agent", "messages", "tools", "params", "prompt_ids",
               "completion_ids", "logprobs", "output", "finish_reason", "model", "usage",
               "latency_ms", "time", "stream", "choice", "tokens", "continues", "drift",
               "tokens_reason", "weight_version", "version_retries", "version_span",
               "upstream_retries", "policy", "policy_version", "completion_id")


class Sessions:
    """Calls the recorder hands over (on its thread), filed by session until the rollout that
    owns the session takes them."""

    def __init__(self) -> None:
        self._open: dict[str, list[dict]] = {}
        self._lock = threading.Lock()
        self.stray = 0  # calls of no open session: a timed-out rollout's, or a foreign client's
        self.on_close: Callable[[str], None] = lambda session: None  # the recorder forgets it

    def open(self, session: str) -> None:
        with self._lock:
            self._open[session] = []

    def add(self, call: dict) -> None:
        with self._lock:
            calls = self._open.get(call.get("session"))
            if calls is None:
                self.stray += 1
            else:
                calls.append(call)

    def close(self, session: str) -> list[dict]:
        with self._lock:
            calls = self._open.pop(session, [])
        self.on_close(session)
        return sorted(calls, key=lambda c: (c["index"], c.get("choice", 0)))


@dataclass(kw_only=True)
class RunnerSettings:
    """What the runner does, filled from RunConfig (run.py), where the defaults are stated."""

    workflow: str
    per_task: int
    jobs: int
    timeout: float
    sampling: dict
    seed: int | None
    reward: RewardFn | None
    ordered: bool


@dataclass
class RecordingEndpoint:
    """The recording endpoint the workflows talk to (not a ``tracewheel.client.Endpoint``, which
    says where to send chat completions); ``start()`` brings it up on first use."""

    start: Callable[[], tuple[str, str]]   # -> (recorder root URL, model name)
    sessions: Sessions
    api_key: str = "EMPTY"
    root: str | None = None
    model_name: str | None = None
    _lock: asyncio.Lock | None = None
    _failed: BaseException | None = None

    async def ready(self) -> tuple[str, str]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # the first rollouts all arrive at once: start it once
            if self._failed is not None:  # tried once: the rollouts waiting do not try again
                raise self._failed
            if self.root is None:
                try:
                    self.root, self.model_name = await asyncio.to_thread(self.start)
                except BaseException as err:
                    self._failed = err
                    raise
        assert self.model_name is not None
        return self.root, self.model_name


def sampling_seed(seed: int | None, task_id: str, sample: int) -> int | None:
    """A per-rollout seed: the same run gives each rollout the same seed, rollouts differ."""
    if seed is None:
        return None
    return int(stable_id(seed, task_id, sample), 16) % 2**31


class Runner:
    def __init__(self, settings: RunnerSettings, endpoint: RecordingEndpoint,
                 submit: Callable[[str, dict, Handle], Any] | None = None):
        self.settings = settings
        self.endpoint = endpoint
        self.workflow = None if submit else load_workflow(settings.workflow)
        self.submit = submit  # Ray: (workflow spec, task, handle) -> awaitable result dict
        self._counter = itertools.count()

    async def one(self, task: dict, sample: int) -> dict:
        """One rollout of ``task``: its record, whatever happened (never raises for the
        workflow's failures)."""
        root, model_name = await self.endpoint.ready()
        task_id = str(task["id"])
        session = stable_id(task_id, sample, next(self._counter), time.time_ns())
        sampling = dict(self.settings.sampling)
        seed = sampling_seed(self.settings.seed, task_id, sample)
        if seed is not None:
            sampling["seed"] = seed
        handle = Handle(root=root, session=session, model_name=model_name, sample=sample,
                        sampling=sampling, api_key=self.endpoint.api_key)
        sessions = self.endpoint.sessions
        sessions.open(session)
        started = time.monotonic()
        status, error, result = "ok", None, Result(answer=None)
        work = asyncio.ensure_future(self._run(task, handle))
        try:
            await asyncio.wait({work}, timeout=self.settings.timeout)
        finally:  # not done: timed out, or this rollout was cancelled (a signal)
            where = None if work.done() else await _cancel(work)
        if where is not None:
            status, error = "timeout", f"no answer within {self.settings.timeout:g} s"
            if where:
                error += f"; the workflow was waiting at {where}"
        else:
            try:
                result = work.result()
            except Exception as err:  # the workflow's failure is the rollout's, not the tool's
                status, error = "error", _describe(err)
        calls = sessions.close(session)
        record = {
            "id": f"{task_id}/{sample}", "task_id": task_id, "group": task_id,
            "sample": sample, "query": task.get("query"), "reference": task.get("reference"),
            "calls": [{k: c.get(k) for k in CALL_FIELDS}
                      for c in calls if c.get("status") == "ok"],
            "failed_calls": [{k: c.get(k) for k in ("id", "index", "agent", "error", "time",
                                                     "upstream_retries")}
                             for c in calls if c.get("status") != "ok"],
            "final": result.answer, "reward": result.reward,
            "reward_info": result.reward_info, "metadata": result.metadata,
            "agent_rewards": result.agent_rewards,
            "status": status, "error": error,
            "latency_ms": round((time.monotonic() - started) * 1000, 1),
        }
        if self.settings.reward is not None and status == "ok":
            try:
                record["reward"], record["reward_info"] = await self.settings.reward(task, record)
            except Exception as err:
                record["reward"] = None
                record["reward_info"] = {"error": f"the reward failed: {_describe(err)}"}
        return record

    async def _run(self, task: dict, handle: Handle) -> Result:
        if self.submit is not None:
            return as_result(await self.submit(self.settings.workflow, task, handle))
        assert self.workflow is not None
        return await call_workflow(self.workflow, task, handle)

    async def all(self, tasks: Iterator[dict], samples: range | None = None
                  ) -> AsyncIterator[dict]:
        """Every rollout of every task (its ``samples``, by default the first ``per_task``),
        ``jobs`` running at once; in input order unless the settings say otherwise. A finished
        rollout that waits for an earlier one to be written does not hold a slot: one slow
        rollout costs one slot, not the run. Tasks are read as they are needed, and at most
        REORDER_WINDOW x jobs records wait (memory stays bounded)."""
        numbers = samples if samples is not None else range(self.settings.per_task)
        work = ((task, sample) for task in tasks for sample in numbers)
        pending: deque[asyncio.Task] = deque()  # started, not yet written, in input order
        window = REORDER_WINDOW * self.settings.jobs
        done_marker = object()
        exhausted = False

        def running() -> list[asyncio.Task]:
            return [f for f in pending if not f.done()]

        async def fill() -> None:
            nonlocal exhausted
            while (not exhausted and len(running()) < self.settings.jobs
                   and len(pending) < window):
                item = await asyncio.to_thread(next, work, done_marker)
                if item is done_marker:
                    exhausted = True
                    return
                pending.append(asyncio.ensure_future(self.one(*item)))

        await fill()
        try:
            while pending:
                ready = pending[0].done() if self.settings.ordered else \
                    any(f.done() for f in pending)
                if not ready:
                    await asyncio.wait(running(), return_when=asyncio.FIRST_COMPLETED)
                if self.settings.ordered:
                    while pending and pending[0].done():
                        yield pending.popleft().result()
                else:
                    for fut in [f for f in pending if f.done()]:
                        pending.remove(fut)
                        yield fut.result()
                await fill()
        finally:  # a reader that stopped early (| head): end the rollouts in flight, quietly
            for fut in pending:
                fut.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def _cancel(work: asyncio.Future) -> str:
    """Cancel ``work`` and wait for it to unwind; where it was waiting (``waiting_at``, read
    before the cancel unwinds its chain of awaits)."""
    where = waiting_at(work)
    work.cancel()
    await asyncio.wait({work})
    if not work.cancelled():
        work.exception()  # what it raised while unwinding: moot, and retrieved
    return where


def waiting_at(task: asyncio.Future, depth: int = 4) -> str:
    """Where a suspended task waits: the innermost ``depth`` frames of its chain of awaits,
    through the tasks and gathers it awaits, innermost first ("anyio/streams/...:123 receive <
    httpcore/..."). A rollout that times out says it, so that a hang names its place (the
    agent's HTTP client, a tool, a lock) without a debugger; "" where nothing is known (a
    sync workflow's thread)."""
    frames = []
    obj: Any = task
    for _ in range(500):  # a chain of awaits is finite; a bound in case it is not
        if isinstance(obj, asyncio.Task):
            obj = obj.get_coro()
        elif isinstance(obj, asyncio.Future):  # a gather: the first child still running
            children = [c for c in getattr(obj, "_children", ()) if not c.done()]
            if not children:
                break
            obj = children[0]
            continue
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if frame is None:
            break
        frames.append(frame)
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None)
        if obj is None:
            break
    return " < ".join(f"{_short(f.f_code.co_filename)}:{f.f_lineno} {f.f_code.co_name}"
                      for f in reversed(frames[-depth:]))


def _short(path: str) -> str:
    """A library file's path from its package on (``site-packages/`` dropped)."""
    head, sep, tail = path.rpartition("site-packages/")
    return tail if sep else path


def _describe(err: BaseException) -> str:
    """An error as one line, with where it came from in the workflow."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text[:2000]}{where}"
