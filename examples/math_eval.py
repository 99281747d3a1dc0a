r"""The demo's task family and its evaluation set: arithmetic in words, one- and two-step word
problems, unit and money conversions and three-step problems, with computed answers.

    python examples/math_eval.py -n 100 --seed 0 -o examples/math-eval.jsonl

Every problem is one Python expression away from its answer, which is what the demo agent's
``execute_python_code`` tool is for: the agent that calls it with the right expression, reads the
printed value and answers it in ``\boxed{}`` is right. The levels are graded so that the embedded
model, once it has learnt that protocol from production traces, solves some and not all (the
regime where a group of rollouts has unequal rewards to learn from):

1. arithmetic in words ("What is 67 + 81?"), 2. one-step word problems, 3. two-step word
problems, 4. unit and money conversions, 5. three-step problems.

The same templates make the demo database's production traffic (``scripts/make_demo_db.py``,
another seed), so the evaluation set asks what production asks. The same command always writes
the same file (a test checks it); ids start ``eval-``, and the loop refuses a set that shares an
id or a normalised query with a training task (``python -m tracewheel.evalset``). Two hundred
by default: a paired 95% interval over 200 tasks tells apart a change of about five points.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass

NAMES = ["Ava", "Ben", "Chloe", "Diego", "Elena", "Farah", "Gus", "Hana", "Ivan", "Jada",
         "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tomas"]
SOURCE = "templates"  # what the evaluation set's tasks name as their source
ITEMS = ["apples", "stickers", "marbles", "pencils", "cookies", "stamps", "shells", "books",
         "cards", "beads"]


@dataclass(frozen=True)
class Problem:
    query: str
    code: str    # the expression whose value is the answer (what the agent prints)
    answer: int
    working: str  # the final answer's one line of working, before the boxed answer
    kind: str
    level: int


def _problem(kind: str, level: int, query: str, expr: str, working: str) -> Problem:
    # The answer is computed from the expression the agent is taught to run: the two agree.
    value = _calc(expr)
    return Problem(query, f"print({expr})", value, working.format(value=value), kind, level)


def _calc(expr: str) -> int:
    """The value of an expression of whole numbers, + - * and //, written by this module."""
    import ast
    import operator

    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv}

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not whole-number arithmetic: {expr}")

    return value(ast.parse(expr, mode="eval").body)


# 1. arithmetic in words
def _sum(r: random.Random) -> Problem:
    a, b = r.randint(12, 989), r.randint(12, 989)
    return _problem("sum", 1, f"What is {a} + {b}?", f"{a} + {b}", f"{a} + {b} = {{value}}.")


def _difference(r: random.Random) -> Problem:
    a = r.randint(100, 999)
    b = r.randint(11, a - 1)
    return _problem("difference", 1, f"What is {a} - {b}?", f"{a} - {b}",
                    f"{a} - {b} = {{value}}.")


def _product(r: random.Random) -> Problem:
    a, b = r.randint(12, 99), r.randint(3, 49)
    return _problem("product", 1, f"What is {a} times {b}?", f"{a} * {b}",
                    f"{a} × {b} = {{value}}.")


# 2. one-step word problems
def _buys_more(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(15, 95), r.randint(6, 60)
    return _problem("buys_more", 2, f"{name} has {a} {item} and buys {b} more. How many {item} "
                    f"does {name} have now?", f"{a} + {b}",
                    f"{name} has {a} + {b} = {{value}} {item}.")


def _gives_away(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a = r.randint(30, 120)
    b = r.randint(5, a - 5)
    return _problem("gives_away", 2, f"{name} had {a} {item} and gave {b} of them away. How many "
                    f"{item} does {name} have left?", f"{a} - {b}",
                    f"{name} has {a} - {b} = {{value}} {item} left.")


def _boxes(r: random.Random) -> Problem:
    item = r.choice(ITEMS)
    per, boxes = r.randint(6, 48), r.randint(3, 25)
    return _problem("boxes", 2, f"A box holds {per} {item}. How many {item} are in {boxes} "
                    f"boxes?", f"{per} * {boxes}", f"{boxes} boxes hold {per} × {boxes} = "
                    f"{{value}} {item}.")


def _share(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    friends, each = r.randint(3, 12), r.randint(4, 25)
    return _problem("share", 2, f"{name} shares {friends * each} {item} equally among {friends} "
                    f"friends. How many {item} does each friend get?",
                    f"{friends * each} // {friends}",
                    f"Each friend gets {friends * each} ÷ {friends} = {{value}} {item}.")


# 3. two-step word problems
def _packs_given(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    packs, per = r.randint(3, 12), r.randint(4, 20)
    given = r.randint(2, packs * per - 2)
    return _problem("packs_given", 3, f"{name} buys {packs} packs of {per} {item} and gives "
                    f"{given} {item} to a friend. How many {item} does {name} have left?",
                    f"{packs} * {per} - {given}",
                    f"{name} has {packs} × {per} - {given} = {{value}} {item} left.")


def _money_left(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    count, price = r.randint(2, 9), r.randint(2, 15)
    money = count * price + r.randint(1, 60)
    return _problem("money_left", 3, f"{name} has ${money} and buys {count} {item} at ${price} "
                    f"each. How many dollars does {name} have left?",
                    f"{money} - {count} * {price}",
                    f"{name} has {money} - {count} × {price} = {{value}} dollars left.")


def _buy_and_give(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(12, 60), r.randint(5, 30)
    c = r.randint(3, a + b - 1)
    return _problem("buy_and_give", 3, f"{name} has {a} {item}. {name} buys {b} more and then "
                    f"gives {c} to a friend. How many {item} does {name} have now?",
                    f"{a} + {b} - {c}", f"{name} has {a} + {b} - {c} = {{value}} {item}.")


def _pages(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    per_day, days, extra = r.randint(5, 40), r.randint(3, 14), r.randint(2, 30)
    return _problem("pages", 3, f"{name} reads {per_day} pages a day for {days} days, then "
                    f"{extra} more pages. How many pages does {name} read in all?",
                    f"{per_day} * {days} + {extra}",
                    f"{name} reads {per_day} × {days} + {extra} = {{value}} pages.")


# 4. unit and money conversions
def _hours_minutes(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    hours, minutes = r.randint(2, 9), r.randint(5, 55)
    return _problem("hours_minutes", 4, f"{name} walked for {hours} hours and {minutes} minutes. "
                    f"How many minutes did {name} walk?", f"{hours} * 60 + {minutes}",
                    f"{hours} hours and {minutes} minutes is {hours} × 60 + {minutes} = "
                    f"{{value}} minutes.")


def _meters(r: random.Random) -> Problem:
    meters, cm = r.randint(2, 40), r.randint(5, 95)
    return _problem("meters", 4, f"A ribbon is {meters} meters and {cm} centimeters long. How "
                    f"many centimeters long is it?", f"{meters} * 100 + {cm}",
                    f"{meters} m {cm} cm is {meters} × 100 + {cm} = {{value}} cm.")


def _dollars_cents(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    dollars, quarters = r.randint(2, 30), r.randint(2, 15)
    return _problem("dollars_cents", 4, f"{name} has {dollars} dollars and {quarters} quarters. "
                    f"How many cents does {name} have?", f"{dollars} * 100 + {quarters} * 25",
                    f"{dollars} × 100 + {quarters} × 25 = {{value}} cents.")


def _pay_minutes(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    minutes = r.choice([15, 20, 30, 40, 45, 90, 150])
    rate = r.randint(2, 12) * 12  # divisible by 60 / gcd(minutes, 60) for every choice
    return _problem("pay_minutes", 4, f"{name} earns ${rate} an hour. How many dollars does "
                    f"{name} earn in {minutes} minutes?", f"{rate} * {minutes} // 60",
                    f"{rate} × {minutes} ÷ 60 = {{value}} dollars.")


# 5. three-step problems
def _rate_times_hours(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    rate, hours, days = r.randint(8, 25), r.randint(2, 8), r.randint(2, 6)
    return _problem("rate_times_hours", 5, f"{name} earns ${rate} an hour and works {hours} "
                    f"hours a day. How many dollars does {name} earn in {days} days?",
                    f"{rate} * {hours} * {days}",
                    f"{rate} × {hours} × {days} = {{value}} dollars.")


def _two_items(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    pens, pen_price, books, book_price = (r.randint(2, 9), r.randint(2, 6), r.randint(2, 6),
                                          r.randint(5, 15))
    return _problem("two_items", 5, f"{name} buys {pens} pens at ${pen_price} each and {books} "
                    f"notebooks at ${book_price} each. How many dollars does {name} spend?",
                    f"{pens} * {pen_price} + {books} * {book_price}",
                    f"{pens} × {pen_price} + {books} × {book_price} = {{value}} dollars.")


def _boxes_sold(r: random.Random) -> Problem:
    item = r.choice(ITEMS)
    boxes, per, extra, sold = r.randint(3, 12), r.randint(4, 15), r.randint(1, 20), 0
    sold = r.randint(2, boxes * per + extra - 1)
    return _problem("boxes_sold", 5, f"A shop has {boxes} boxes of {per} {item} and {extra} loose "
                    f"{item}. It sells {sold} {item}. How many {item} are left?",
                    f"{boxes} * {per} + {extra} - {sold}",
                    f"{boxes} × {per} + {extra} - {sold} = {{value}} {item} left.")


TEMPLATES: list[Callable[[random.Random], Problem]] = [
    _sum, _difference, _product, _buys_more, _gives_away, _boxes, _share, _packs_given,
    _money_left, _buy_and_give, _pages, _hours_minutes, _meters, _dollars_cents, _pay_minutes,
    _rate_times_hours, _two_items, _boxes_sold]


def problems(n: int, seed: int, avoid: set[str] | frozenset[str] = frozenset()
             ) -> list[Problem]:
    """``n`` distinct problems, the templates in turn, drawn with ``seed``; none asks a query
    in ``avoid``."""
    rng = random.Random(seed)
    seen, out = set(avoid), []
    while len(out) < n:
        problem = TEMPLATES[len(out) % len(TEMPLATES)](rng)
        if problem.query not in seen:
            seen.add(problem.query)
            out.append(problem)
    return out


def generate(n: int, seed: int) -> list[dict]:
    """The evaluation set: tasks ``{id, query, reference, metadata: {source, kind, level}}``."""
    return [{"id": f"eval-{seed}-{i:04d}", "query": p.query, "reference": str(p.answer),
             "metadata": {"source": SOURCE, "kind": p.kind, "level": p.level}}
            for i, p in enumerate(problems(n, seed))]


def main(argv: list[str] | None = None) -> int:
    from tracewheel.jsonl import open_output

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=200, help="problems (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="the generator's seed (default 0)")
    parser.add_argument("-o", "--output", help="write here (default stdout)")
    args = parser.parse_args(argv)
    with open_output(args.output) as out:
        for t in generate(args.n, args.seed):
            out.write(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
