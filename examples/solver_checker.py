r"""A two-agent workflow: a Solver (the demo's math agent: an AgentScope ``ReActAgent`` with a
sandboxed Python tool, answering in ``\boxed{}``) and a Checker that reads the problem and the
Solver's answer and either accepts it or sends it back with a reason; the Solver then tries
again, up to ROUNDS times. The final answer is the Solver's last.

    rollout -w examples/solver_checker.py:run --policy Solver=solver,Checker=checker ...

Each agent calls its model through ``handle.chat_model(agent=NAME)``, so every call is recorded
as that agent's, and with a policy map each agent is served by its own LoRA adapter. Where the
task has a reference, each agent gets its own reward (``agent_rewards``): the Solver 1 for a
right final answer; the Checker the share of its verdicts that were right (it accepted a right
answer, or sent back a wrong one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentscope.agent import ReActAgent
from agentscope.formatter import OpenAIChatFormatter
from agentscope.message import Msg
from agentscope.tool import Toolkit

from tracewheel.answers import boxed_reward
from tracewheel.workflow import Result, load_callable

# The Solver is the demo's math agent: its prompt, tool and step limit.
_math = load_callable(f"{Path(__file__).with_name('math_agent.py')}:make_toolkit").__globals__

CHECKER_PROMPT = (
    "You check the answer to a math problem. Work the problem out yourself, then compare. If "
    "the proposed answer is right, reply ACCEPT. If it is wrong, reply REJECT and say in one "
    "sentence what is wrong.")
ROUNDS = 2


def rejected(verdict: str) -> bool:
    return "REJECT" in verdict.upper()


async def run(task: dict, handle: Any) -> Result:
    """The Solver answers, the Checker accepts or sends it back; the Solver's last answer."""
    solver = ReActAgent(name="Solver", sys_prompt=_math["SYS_PROMPT"],
                        model=handle.chat_model(agent="Solver"),
                        formatter=OpenAIChatFormatter(), toolkit=_math["make_toolkit"](),
                        max_iters=_math["MAX_ITERS"])
    checker = ReActAgent(name="Checker", sys_prompt=CHECKER_PROMPT,
                         model=handle.chat_model(agent="Checker"),
                         formatter=OpenAIChatFormatter(), toolkit=Toolkit(), max_iters=1)
    for agent in (solver, checker):
        agent.set_console_output_enabled(False)
    request: Msg | list[Msg] = _math["conversation"](task)
    answer, verdicts = "", []
    for _ in range(ROUNDS):
        answer = (await solver(request)).get_text_content() or ""
        verdict = (await checker(Msg("user", f"Problem: {task['query']}\n\nProposed answer: "
                                             f"{answer}", "user"))).get_text_content() or ""
        right, _ = boxed_reward(answer, task.get("reference"))
        verdicts.append(None if right is None else float(rejected(verdict) != bool(right)))
        if not rejected(verdict):
            break
        request = Msg("user", f"A checker rejected your answer: {verdict.strip()[:300]}\n"
                              f"Solve the problem again; give the final answer in \\boxed{{}}.",
                      "user")
    solved, _ = boxed_reward(answer, task.get("reference"))
    if solved is None:
        return Result(answer=answer)
    return Result(answer=answer, agent_rewards={
        "Solver": solved, "Checker": sum(verdicts) / len(verdicts)})
