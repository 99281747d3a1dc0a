r"""The demo's rewards. ``reward`` (the loop's default): the right answer in ``\boxed{}`` scores
1.0, a wrong answer in ``\boxed{}`` FORMAT_CREDIT, no ``\boxed{}`` at all 0.0. ``worked_reward``:
the same, but a wrong boxed answer earns FORMAT_CREDIT only where the agent worked it out.

    rollout --workflow examples/math_agent.py:run --reward examples/math_reward.py:reward ...

The small embedded model rarely solves a grade-school problem (a few percent), so a right-or-wrong
reward gives GRPO almost no group with unequal rewards to learn from; answering in the format the
agent is asked for is within its reach, and is what production traces with a wrong format lack.
The catch: the format alone can be hacked. After two GRPO iterations of ``make flywheel`` every
evaluation answer was a bare ``\boxed{42}`` (the system prompt's example).

``worked_reward`` pays only for a boxed value the agent computed: one its Python code printed,
or the result of a true equation in its answer (``14 + 13 - 19 = 8 ... \boxed{8}``) over at
least one number of the question. It cannot be hacked that way, but on the embedded model it
leaves GRPO almost nothing to learn from: 4 of 32 groups with unequal rewards after the warm-up,
and one GRPO iteration changed no evaluation answer's reward (bench/README.md has the figures).

The reward info keeps ``match`` (the answer was right), so a report counts solved tasks apart
from the shaped reward; ``worked_reward`` adds ``worked`` (how a wrong answer was worked out, or
null). Equations are read with a small arithmetic parser (numbers, + - * / and parentheses): no
text is run.
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction
from typing import Any

from tracewheel.answers import boxed_reward, normalize
from tracewheel.messages import content_text

FORMAT_CREDIT = 0.2

# "14 + 13 - 19 = 8", "3 × $4 = $12", "88 / 2 = 44.0": arithmetic, then "=", then a number.
_EQUATION = re.compile(
    r"((?:[\d.,$()]|\s|[-+*/×x÷·−])+?)\s*=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}


def _arithmetic(node: ast.AST) -> Fraction:
    """The value of a parsed expression of numbers, + - * / and parentheses; ValueError else."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_arithmetic(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        right = _arithmetic(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ValueError("division by zero")
        return _OPS[type(node.op)](_arithmetic(node.left), right)
    raise ValueError("not arithmetic")


def _evaluate(expression: str) -> Fraction | None:
    text = (expression.replace(",", "").replace("$", "").replace("×", "*").replace("x", "*")
            .replace("÷", "/").replace("·", "*").replace("−", "-").strip())
    if not re.search(r"\d\s*[-+*/]\s*\(?\s*\d", text):
        return None  # a bare number is not a computation
    try:
        return _arithmetic(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def _printed(rollout: dict) -> set[Fraction]:
    """Every number the agent's tool calls printed on a line of its own."""
    values: set[Fraction] = set()
    for call in rollout.get("calls") or []:
        for message in call.get("messages") or []:
            if message.get("role") != "tool":
                continue
            for line in content_text(message.get("content")).splitlines():
                value = normalize(line.strip())
                if isinstance(value, Fraction):
                    values.add(value)
    return values


def worked(final: str, boxed: str, rollout: dict, question: str) -> str | None:
    """How the agent arrived at its boxed value: "code" (its code printed it), "equation" (a
    true equation in its answer gives it), or None (a guess)."""
    value = normalize(boxed)
    if not isinstance(value, Fraction):
        return None
    if value in _printed(rollout):
        return "code"
    given = {Fraction(n) for n in _NUMBER.findall(question.replace(",", ""))}
    for match in _EQUATION.finditer(final):
        left, result = match.group(1), normalize(match.group(2))
        if result != value or _evaluate(left) != value:
            continue
        if given & {Fraction(n) for n in _NUMBER.findall(left.replace(",", ""))}:
            return "equation"
    return None


def reward(task: dict, rollout: dict) -> tuple[float | None, dict[str, Any]]:
    """1.0 right, FORMAT_CREDIT boxed but wrong, 0.0 not boxed (None: no reference)."""
    value, info = boxed_reward(content_text(rollout.get("final")), task.get("reference"))
    if value == 0.0 and info["predicted"]:
        value = FORMAT_CREDIT
    return value, info


def worked_reward(task: dict, rollout: dict) -> tuple[float | None, dict[str, Any]]:
    """1.0 right, FORMAT_CREDIT boxed, wrong and worked out, 0.0 else (None: no reference)."""
    final = content_text(rollout.get("final"))
    value, info = boxed_reward(final, task.get("reference"))
    if value == 0.0 and info["predicted"]:
        how = worked(final, info["predicted"][-1], rollout, str(task.get("query") or ""))
        info["worked"] = how
        value = FORMAT_CREDIT if how else 0.0
    return value, info
