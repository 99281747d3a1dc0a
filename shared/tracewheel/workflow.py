"""The workflow contract: how ``rollout`` (and the flywheel's evaluation) runs a user's agent.

A workflow is a function ``run(task, handle)``, plain or ``async``, named ``path/to/file.py:run``
or ``package.module:run``. ``task`` is the task record (a dict: ``query``, ``messages``,
``reference``, ...). ``handle`` says where the model is: ``handle.model`` is a ready AgentScope
``OpenAIChatModel`` whose every call is recorded; ``handle.base_url`` and ``handle.model_name``
serve any other OpenAI-compatible client; ``handle.chat_model(agent="Checker")`` gives each
agent of a multi-agent workflow a model of its own, so its calls are told apart.

It returns the final answer (any JSON value, usually the agent's reply text), or a ``Result``
(or a dict with an ``answer`` key and any of ``reward``, ``reward_info``, ``metadata``) when it
scores itself.

    async def run(task, handle):
        agent = ReActAgent(name="MathAgent", sys_prompt=..., model=handle.model,
                           formatter=OpenAIChatFormatter(), toolkit=toolkit)
        reply = await agent(Msg("user", task["query"], "user"))
        return reply.get_text_content()
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import TracewheelError
from .ids import stable_id

RESULT_KEYS = {"answer", "reward", "reward_info", "metadata", "agent_rewards"}
# The agent's client waits this long for the local recorder: to connect, and for a reply. The
# openai client's own 5-s connect limit failed rollouts on a loaded 2-core CI machine (vLLM, the
# agents and their sandboxes on the same cores); the rollout's --rollout-timeout bounds the rest.
AGENT_TIMEOUT = 600.0


@dataclass
class Result:
    """What a workflow may return instead of a bare answer."""

    answer: Any
    reward: float | None = None
    reward_info: dict | None = None
    metadata: dict | None = None
    # Multi-agent: each agent's own reward (by agent name); its samples learn from it instead
    # of the rollout's reward.
    agent_rewards: dict[str, float] | None = None


@dataclass
class Handle:
    """Where one rollout's model is. Plain data, so it crosses to Ray workers."""

    root: str                      # the recording endpoint, http://host:port
    session: str                   # this rollout's session at the endpoint
    model_name: str                # the model's name at the endpoint
    sample: int = 0                # the index of this rollout in its group
    sampling: dict = field(default_factory=dict)  # temperature, max_tokens, seed, ...
    api_key: str = "EMPTY"         # the endpoint's key, if it needs one

    @property
    def base_url(self) -> str:
        return self.base_url_for(None)

    def base_url_for(self, agent: str | None) -> str:
        """The base URL whose calls are recorded as ``agent``'s."""
        return f"{self.root}/s/{self.session}" + (f"/agent/{agent}" if agent else "") + "/v1"

    def chat_model(self, agent: str | None = None, *, stream: bool = False,
                   **generate_kwargs: Any) -> Any:
        """An AgentScope ``OpenAIChatModel`` on this rollout's endpoint, with the run's
        sampling settings (``generate_kwargs`` add to or override them)."""
        from agentscope.model import OpenAIChatModel

        model = OpenAIChatModel(
            self.model_name, api_key=self.api_key, stream=stream,
            client_kwargs={"base_url": self.base_url_for(agent), "max_retries": 0,
                           "timeout": AGENT_TIMEOUT},
            generate_kwargs={**self.sampling, **generate_kwargs})
        self.__dict__.setdefault("_models", []).append(model)  # not a field: not sent to Ray
        return model

    async def aclose(self) -> None:
        """Close the HTTP clients of the models this handle made, on the event loop that used
        them. Left to the garbage collector, they close after their loop is gone, and each
        prints a traceback ("Event loop is closed") after a run that went well."""
        for model in self.__dict__.pop("_models", []):
            client = getattr(model, "client", None)
            if client is not None:
                await client.close()

    @cached_property
    def model(self) -> Any:
        """The AgentScope model most workflows need."""
        return self.chat_model()

    def to_dict(self) -> dict:
        return asdict(self)


Workflow = Callable[[dict, Handle], Any]


def load_callable(spec: str, what: str = "workflow") -> Callable[..., Any]:
    """``path/to/file.py:function`` or ``package.module:function`` as a callable; ``what``
    names it in errors."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise TracewheelError(f"{what} {spec!r}: expected FILE.py:FUNCTION or MODULE:FUNCTION")
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise TracewheelError(f"{what} {spec!r}: no such file {path}")
        module_name = f"tracewheel_workflow_{stable_id(str(path))}"
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module  # dataclasses and pickling look modules up
            try:
                loader_spec.loader.exec_module(module)
            except Exception as err:
                del sys.modules[module_name]
                raise TracewheelError(f"{what} {spec!r}: importing {path} failed: "
                                    f"{type(err).__name__}: {err}") from err
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise TracewheelError(f"{what} {spec!r}: cannot import {target}: {err}") from err
    fn = getattr(module, name, None)
    if fn is None:
        raise TracewheelError(f"{what} {spec!r}: {target} has no {name}")
    if not callable(fn):
        raise TracewheelError(f"{what} {spec!r}: {name} is not a function")
    return fn


def load_workflow(spec: str) -> Workflow:
    return load_callable(spec, "workflow")


def absolute_spec(spec: str) -> str:
    """A FILE.py spec with its path made absolute (for workers in another directory)."""
    target, _, name = spec.rpartition(":")
    if target.endswith(".py") or "/" in target:
        return f"{Path(target).expanduser().resolve()}:{name}"
    return spec


def as_result(value: Any) -> Result:
    """A workflow's return value as a Result."""
    if isinstance(value, Result):
        return value
    if isinstance(value, dict) and "answer" in value and set(value) <= RESULT_KEYS:
        return Result(**value)
    return Result(answer=value)


async def call_workflow(fn: Workflow, task: dict, handle: Handle) -> Result:
    """Run a workflow, sync (in a thread, so the event loop goes on) or async."""
    if inspect.iscoroutinefunction(fn):
        try:
            value = await fn(task, handle)
        finally:
            await handle.aclose()
    else:
        import asyncio  # running: already imported by the loop; not at --help

        value = await asyncio.to_thread(fn, task, handle)
        if inspect.isawaitable(value):
            value = await value
    return as_result(value)
