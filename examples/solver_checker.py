r"""A two-agent workflow: a Solver (the demo's math agent: an AgentScope ``ReActAgent`` with a
sandboxed Python tool, answering in ``\boxed{}``) and a Checker that reads the problem and the
Solver's answer and either accepts it or sends it back with a reason; the Solver then tries
again, up to ROUNDS times. The final answer is the Solver's last.

    rollout -w examples/solver_checker.py:run --policy Solver=solver,Checker=checker ...

Each agent calls its model through ``handle.chat_model(agent=NAME)``, so every call is recorded
as that agent's, and with a policy map each agent is served by its own LoRA adapter. Where the
task has a reference, each agent gets its own reward (``agent_rewards``): the Solver 1 for a
right final answer; the Checker its balanced accuracy, the mean over the two kinds of answer
(right ones, wrong ones) of the share it judged rightly. So a checker that always accepts, or
always rejects, earns 0.5, what a coin earns, however often the Solver is right: the share of
right verdicts paid 0.98 for always accepting a Solver right 98% of the time, and the Checker
learnt to accept everything.

Both kinds must be there for that, and a good Solver is rarely wrong: after the team's rounds
the Checker also judges one answer of the other kind, a probe (a fresh Checker, the same
policy): where the Solver's final answer is right, that answer with a wrong number boxed (its
first wrong answer where it had one); where it is wrong, with the reference boxed. The probe
does not change the team's answer. ``metadata.verdicts`` lists every verdict (``round``: 0,
1, or ``probe``; ``answer_right``; ``rejected``), and ``metadata.solver_alone_right`` whether
the Solver's first answer, before any check, was right: the team's right share is compared
with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agentscope.agent import ReActAgent
from agentscope.formatter import OpenAIChatFormatter
from agentscope.message import Msg
from agentscope.tool import Toolkit

from tracewheel.answers import boxed_reward
from tracewheel.ids import stable_id
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


def balanced(verdicts: list[dict]) -> float:
    """The mean over the kinds of answer judged (right, wrong) of the share judged rightly:
    accepted where right, rejected where wrong."""
    shares = []
    for kind in (True, False):
        judged = [v["rejected"] != kind for v in verdicts if v["answer_right"] is kind]
        if judged:
            shares.append(sum(judged) / len(judged))
    return sum(shares) / len(shares)


def with_boxed(answer: str, value: str) -> str:
    r"""``answer`` with its last ``\boxed{}`` holding ``value`` (appended where it has none)."""
    found = list(re.finditer(r"\\boxed\s*\{[^{}]*\}", answer))
    if not found:
        return f"{answer}\n\nThe answer is \\boxed{{{value}}}."
    last = found[-1]
    return answer[:last.start()] + f"\\boxed{{{value}}}" + answer[last.end():]


def wrong_value(reference: str, task_id: str) -> str | None:
    """A plausible wrong number for ``reference`` (a slip: off by one or ten, doubled or
    halved), the same for a task every time; None where the reference is not a number."""
    try:
        value = float(reference.replace(",", ""))
    except ValueError:
        return None
    choices = [value + 1, value - 1, value + 10, value * 2, value / 2]
    pick = choices[int(stable_id(task_id), 16) % len(choices)]
    return str(int(pick)) if float(pick).is_integer() else f"{pick:g}"


def probe(task: dict, answer: str, solved: bool, first_wrong: str | None) -> str | None:
    """An answer of the other kind than the Solver's final one (see the module docstring)."""
    if not solved:
        return with_boxed(answer, str(task["reference"]))
    if first_wrong is not None:
        return first_wrong
    wrong = wrong_value(str(task["reference"]), str(task.get("id")))
    return None if wrong is None else with_boxed(answer, wrong)


def make_checker(handle: Any) -> ReActAgent:
    checker = ReActAgent(name="Checker", sys_prompt=CHECKER_PROMPT,
                         model=handle.chat_model(agent="Checker"),
                         formatter=OpenAIChatFormatter(), toolkit=Toolkit(), max_iters=1)
    checker.set_console_output_enabled(False)
    return checker


async def check(checker: ReActAgent, task: dict, answer: str) -> str:
    return (await checker(Msg("user", f"Problem: {task['query']}\n\nProposed answer: "
                                      f"{answer}", "user"))).get_text_content() or ""


async def run(task: dict, handle: Any) -> Result:
    """The Solver answers, the Checker accepts or sends it back; the Solver's last answer."""
    solver = ReActAgent(name="Solver", sys_prompt=_math["SYS_PROMPT"],
                        model=handle.chat_model(agent="Solver"),
                        formatter=OpenAIChatFormatter(), toolkit=_math["make_toolkit"](),
                        max_iters=_math["MAX_ITERS"])
    solver.set_console_output_enabled(False)
    checker = make_checker(handle)
    reference = task.get("reference")
    request: Msg | list[Msg] = _math["conversation"](task)
    answer, verdicts, alone, first_wrong = "", [], None, None
    for k in range(ROUNDS):
        answer = (await solver(request)).get_text_content() or ""
        verdict = await check(checker, task, answer)
        right, _ = boxed_reward(answer, reference)
        if k == 0:
            alone = right
        if right is not None:
            verdicts.append({"round": k, "answer_right": bool(right),
                             "rejected": rejected(verdict)})
            if not right and first_wrong is None:
                first_wrong = answer
        if not rejected(verdict):
            break
        request = Msg("user", f"A checker rejected your answer: {verdict.strip()[:300]}\n"
                              f"Solve the problem again; give the final answer in \\boxed{{}}.",
                      "user")
    solved, _ = boxed_reward(answer, reference)
    if solved is None:
        return Result(answer=answer)
    other = probe(task, answer, bool(solved), first_wrong)
    if other is not None:
        verdict = await check(make_checker(handle), task, other)
        verdicts.append({"round": "probe", "answer_right": not solved,
                         "rejected": rejected(verdict)})
    return Result(answer=answer,
                  agent_rewards={"Solver": solved, "Checker": balanced(verdicts)},
                  metadata={"verdicts": verdicts, "solver_alone_right": bool(alone)})
