r"""The demo workflow: the seed's math agent, an AgentScope ``ReActAgent`` that can run Python
code and gives its final answer in ``\boxed{}``.

    rollout --workflow examples/math_agent.py:run -n 4 --reward boxed < tasks.jsonl

The model's code runs through ``tracewheel.sandbox``: a child process with a timeout, CPU and
memory limits, a fresh temporary directory and none of this process's environment.

``run_tool_first`` is the same agent made to call its tool in its first step (``tool_choice``
``required``): a small model rarely reaches for a tool by itself, and a trajectory of several
calls is what the recording and merging are for.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from agentscope.agent import ReActAgent
from agentscope.formatter import OpenAIChatFormatter
from agentscope.message import Msg, TextBlock
from agentscope.tool import Toolkit, ToolResponse

from tracewheel.sandbox import run_python

SYS_PROMPT = (
    "You are a careful math assistant. Solve the problem step by step. You can run Python "
    "with the execute_python_code tool: print the values you need. Give the final answer "
    "in \\boxed{}, for example \\boxed{42}.")
MAX_ITERS = 4
CODE_TIMEOUT = 10.0


async def execute_python_code(code: str) -> ToolResponse:
    """Run Python code and return what it prints (stdout and stderr).

    Args:
        code (str):
            The Python code to run. Print the values you need to see.
    """
    result = await asyncio.to_thread(run_python, code, timeout=CODE_TIMEOUT)
    return ToolResponse(content=[TextBlock(type="text", text=result.text())])


def make_toolkit() -> Toolkit:
    toolkit = Toolkit()
    toolkit.register_tool_function(execute_python_code)
    return toolkit


class ToolFirstAgent(ReActAgent):
    """A ReActAgent whose first reasoning step must call a tool."""

    async def reply(self, *args: Any, **kwargs: Any) -> Msg:
        self._steps = 0
        return await super().reply(*args, **kwargs)

    async def _reasoning(self, tool_choice: Literal["auto", "none", "required"] | None = None
                         ) -> Msg:
        self._steps += 1
        return await super()._reasoning("required" if self._steps == 1 else tool_choice)


def conversation(task: dict) -> list[Msg]:
    """The task as the messages the agent is given: the earlier user and assistant turns of
    its conversation (text only; the agent has its own system prompt), then the request."""
    history = [m for m in (task.get("messages") or [])[:-1]
               if m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
               and m["content"].strip()]
    msgs = [Msg(m["role"] if m["role"] == "user" else "MathAgent", m["content"], m["role"])
            for m in history]
    return [*msgs, Msg("user", task["query"], "user")]


async def _solve(task: dict, handle: Any, agent_class: type[ReActAgent]) -> str:
    agent = agent_class(name="MathAgent", sys_prompt=SYS_PROMPT, model=handle.model,
                        formatter=OpenAIChatFormatter(), toolkit=make_toolkit(),
                        max_iters=MAX_ITERS)
    agent.set_console_output_enabled(False)
    reply = await agent(conversation(task))
    return reply.get_text_content() or ""


async def run(task: dict, handle: Any) -> str:
    """The workflow: the agent's final reply to the task."""
    return await _solve(task, handle, ReActAgent)


async def run_tool_first(task: dict, handle: Any) -> str:
    """The workflow with a tool call forced in the first step."""
    return await _solve(task, handle, ToolFirstAgent)
