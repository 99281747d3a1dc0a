r"""Problems people wrote: GSM8K's training split, as the demo's production traffic and as the
evaluation set the loop is judged on.

    python examples/gsm8k.py -n 200 --seed 0 -o examples/gsm8k-eval.jsonl

GSM8K (openai/grade-school-math, MIT licence, ``examples/gsm8k/``) holds 7,473 grade-school
word problems written by people, each with a worked solution whose calculator annotations
(``48/2 = <<48/2=24>>24 clips``) say which arithmetic each step does. Those steps become the
demo agent's Python code, one line per step, each value named after what the solution says it
is (``clips_may = 48 / 2``), the last one printed:

    clips_may = 48 / 2
    clips = 48 + clips_may
    print(clips)

A problem is used only where that code is sure: every annotation computes what it says it does,
each step does some arithmetic (no bare constants) and the last step's value is the solution's
final answer. Of the 6,699 problems that pass, the demo keeps those of one or two steps
(2,206; ``MAX_STEPS``). Measured: the 135M agent warmed up on one- and two-step traffic was
right on 0.110 of 200 held-out problems of that kind; warmed up on traffic of up to three steps,
on 0.040 of 200 held-out problems of up to three steps (greedy, both). The longer ones stay for
GSM8K's own test split to report.

The problems are split once, by a hash of their text, into the evaluation pool (``POOL_SHARE``)
and the production pool: the evaluation set is drawn from the first, the demo database
(``scripts/make_demo_db.py``) from the second, so no problem can be in both, whatever the
seeds; the loop checks it again (``python -m tracewheel.evalset``). Every task names its source
(``metadata.source``: ``gsm8k-train``, with its line in the split as ``metadata.index``).
GSM8K's test split is not here: it is for reporting only (``make gsm8k-test``).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import keyword
import operator
import random
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).with_name("gsm8k") / "train.jsonl.gz"
TEST_DATA = Path(__file__).with_name("gsm8k") / "test.jsonl.gz"  # reporting only
SOURCE = "gsm8k-train"
MAX_STEPS = 2
POOL_SHARE = 0.2  # of the usable problems, kept for evaluation (by a hash of their text)

_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}
# Words that do not name a quantity: left out of a value's name.
_STOP = frozenset(re.split(r"\s+", (
    "a an the of in on at to for from by with and or but is are was were be been it its his "
    "her their he she they them this that these those each per every so then there has have "
    "had will would can could do does did as than more less into out up down over all only "
    "just also after before much many how what which who when where if about now left total "
    "altogether needs need needed i we you my our your one because since means thus therefore")))


@dataclass(frozen=True)
class Problem:
    """One problem and the production agent's way to it (the fields of math_eval.Problem)."""

    query: str
    code: str      # the agent's program: a named line per step, the last value printed
    answer: int
    working: str   # the final answer's line of working, before the boxed answer
    kind: str
    level: int     # calculator steps
    index: int     # its line in the training split


def _value(node: ast.AST, names: dict[str, Fraction]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value))
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, names)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _value(node.left, names), _value(node.right, names)
        if isinstance(node.op, ast.Pow) and (right.denominator != 1 or abs(right) > 8):
            raise ValueError("power")
        return _OPS[type(node.op)](left, right)
    raise ValueError(f"not arithmetic: {ast.dump(node)}")


def exact(expr: str, names: dict[str, Fraction] | None = None) -> Fraction:
    """The exact value of an arithmetic expression (numbers, names, + - * / **)."""
    return _value(ast.parse(expr, mode="eval").body, names or {})


def run(code: str) -> str:
    """What the program prints when Python runs it: each line ``name = expr`` evaluated with
    Python's own int and float arithmetic (so ``48 / 2`` prints ``24.0``), without running
    anything but arithmetic. The sandboxed tool prints the same (a test checks)."""
    names: dict[str, int | float] = {}
    printed = []

    def value(node: ast.AST):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    for stmt in ast.parse(code).body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
            names[stmt.targets[0].id] = value(stmt.value)
        elif (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
              and getattr(stmt.value.func, "id", None) == "print"):
            printed.append(str(value(stmt.value.args[0])))
        else:
            raise ValueError("not a step or a print")
    return "\n".join(printed) + "\n"


def _clean(expr: str) -> str:
    """An annotation's expression as Python: thousands commas and dollar signs dropped,
    ``x`` as ``*``, ``20%`` as ``20/100``."""
    expr = re.sub(r"(?<=\d),(?=\d{3})", "", expr.replace("$", "").replace(" ", ""))
    expr = re.sub(r"(?<=[\d)])x(?=[\d(.])", "*", expr)
    return re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", expr)


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", re.sub(r"'s\b", "", text.lower()))
            if w not in _STOP and len(w) > 1]


def _name(solution: str, match: re.Match, used: set[str], step: int) -> str:
    """A name for a step's value from the words the solution says it with: those after the
    value ("24 clips in May" -> clips_may), else those before the arithmetic ("she earned
    0.2 x 50" -> she_earned), else stepN."""
    after = re.split(r"[.,;:!?\n(]|\d", re.sub(r"^\s*\$?[\d.,]+", "", solution[match.end():]),
                     maxsplit=1)[0]
    words = _words(after)[:3]
    if not words:
        start = max(solution.rfind(c, 0, match.start()) for c in ".\n,;:") + 1
        before = re.sub(r"[\d.+\-*/x=$%() ]+$", "", solution[start:match.start()])
        words = _words(before)[-2:]
    return _unique("_".join(words) or f"step{step}", used)


def _literal(text: str) -> str:
    return "0" + text if text.startswith(".") else text


def _unique(name: str, used: set[str]) -> str:
    if keyword.iskeyword(name) or name in dir(__builtins__):
        name += "_value"
    base, k = name, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def program(solution: str) -> tuple[list[str], Fraction] | None:
    """The solution's steps as lines of Python, and the last value; None where an annotation
    does not compute what it says, or does no arithmetic. (Naming the question's numbers too,
    in lines of their own before the steps, was measured worse: a 135M agent trained on 789
    such traces was right on 0.045 of 200 held-out problems against 0.110 without, its code
    failing on names it had not defined.)"""
    steps: list[tuple[re.Match, str, Fraction]] = []
    for match in _ANNOTATION.finditer(solution):
        expr = _clean(match[1])
        if not re.search(r"\d\s*[-+*/]|\)\s*[-+*/]", expr):
            return None  # a bare constant: the arithmetic happened in the text
        try:
            value, stated = exact(expr), Fraction(_clean(match[2]).rstrip("."))
        except (ValueError, ZeroDivisionError, SyntaxError, TypeError):
            return None
        if value != stated:
            return None
        steps.append((match, expr, value))
    if not steps:
        return None
    used: set[str] = set()
    lines: list[str] = []
    values: list[tuple[Fraction, str]] = []  # each step's value and name, in order
    for match, expr, value in steps:
        def named(number: re.Match) -> str:
            # a number that is an earlier step's value is that step (the latest)
            here = Fraction(number[0])
            return next((n for v, n in reversed(values) if v == here), _literal(number[0]))

        body = _NUMBER.sub(named, expr)
        body = re.sub(r"\s*(\*\*|//|[-+*/])\s*", r" \1 ", body)
        body = re.sub(r"\s+", " ", body.replace("( ", "(").replace(" )", ")")).strip()
        if body.startswith("- "):
            body = "-" + body[2:]
        name = _name(solution, match, used, len(values) + 1)
        lines.append(f"{name} = {body}")
        values.append((value, name))
    return [*lines, f"print({values[-1][1]})"], values[-1][0]


def _working(solution: str) -> str:
    """The solution's last line, its arithmetic left out: what the agent says with the value
    ("Natalia sold 72 clips altogether in April and May.")."""
    last = solution.strip().splitlines()[-1]
    arithmetic = r"[\d\s.,+\-*/x×()$%]*\d[\d\s.,+\-*/x×()$%]*=\s*(\$?)<<[^<>]*>>"
    last = re.sub(r"<<[^<>]*>>", "", re.sub(arithmetic, r" \1", last))
    return re.sub(r"\s+", " ", last).strip()


@lru_cache(maxsize=1)
def usable() -> tuple[Problem, ...]:
    """Every problem of the split whose solution becomes a sure program, in file order."""
    out = []
    with gzip.open(DATA, "rt", encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            row = json.loads(line)
            solution, _, final = row["answer"].partition("####")
            made = program(solution)
            try:
                answer = Fraction(final.strip().replace(",", ""))
            except ValueError:
                continue
            if made is None or made[1] != answer or answer.denominator != 1:
                continue
            code, value = made
            out.append(Problem(row["question"].strip(), "\n".join(code), int(answer),
                               _working(solution), SOURCE,
                               len(_ANNOTATION.findall(solution)), index))
    return tuple(out)


def in_eval_pool(problem: Problem) -> bool:
    """Whether the problem belongs to the evaluation pool: a hash of its text, so the split
    holds for every seed and size."""
    digest = hashlib.sha256(problem.query.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < POOL_SHARE


def problems(n: int, seed: int, *, pool: str = "production", max_steps: int = MAX_STEPS
             ) -> list[Problem]:
    """``n`` problems of one to ``max_steps`` steps from a pool (``production`` or ``eval``),
    drawn with ``seed``."""
    wanted = pool == "eval"
    found = [p for p in usable() if p.level <= max_steps and in_eval_pool(p) == wanted]
    if n > len(found):
        raise ValueError(f"{pool} pool has {len(found)} problems of up to {max_steps} steps, "
                         f"not {n}")
    return random.Random(seed).sample(found, n)


def task(problem: Problem) -> dict:
    return {"id": f"{SOURCE}-{problem.index:04d}", "query": problem.query,
            "reference": str(problem.answer),
            "metadata": {"source": SOURCE, "index": problem.index, "steps": problem.level}}


def test_tasks(n: int, seed: int) -> list[dict]:
    """``n`` problems of GSM8K's test split (all 1,319 where ``n`` is 0), drawn with ``seed``,
    as tasks: for reporting a model after the loop, never for training or choosing settings."""
    with gzip.open(TEST_DATA, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]
    chosen = sorted(random.Random(seed).sample(range(len(rows)), n) if n else range(len(rows)))
    return [{"id": f"gsm8k-test-{i:04d}", "query": rows[i]["question"].strip(),
             "reference": rows[i]["answer"].rpartition("####")[2].strip().replace(",", ""),
             "metadata": {"source": "gsm8k-test", "index": i}} for i in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=300, help="problems (default 300; with --test, "
                        "0 is all 1,319)")
    parser.add_argument("--seed", type=int, default=0, help="the draw's seed (default 0)")
    parser.add_argument("--test", action="store_true",
                        help="from GSM8K's test split, for reporting only (default: the "
                             "evaluation pool of the training split)")
    parser.add_argument("-o", "--output", help="write here (default stdout)")
    args = parser.parse_args(argv)
    if args.test:
        tasks = test_tasks(args.n, args.seed)
    else:
        tasks = [task(p) for p in sorted(problems(args.n, args.seed, pool="eval"),
                                         key=lambda p: p.index)]
    from tracewheel.jsonl import open_output

    with open_output(args.output) as out:
        for t in tasks:
            out.write(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
