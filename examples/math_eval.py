r"""The demo's evaluation set: grade-school word problems with computed answers.

    python examples/math_eval.py -n 100 --seed 0 -o examples/math-eval.jsonl

The demo learns from a few dozen production conversations, and their held-out split (seven to
ten tasks) cannot tell a real gain from noise. These problems are of the same kind (one to three
steps of arithmetic on whole numbers, the answer a whole number), made from templates with a
fixed seed, so the same command always writes the same file (a test checks it) and every model
of a run is scored on the same tasks. Their ids start ``eval-``; the loop checks that no task of
the set shares an id or a normalised query with a training task or paraphrase
(``python -m tracewheel.evalset``).

A hundred by default: one model's pass over them takes about 5 minutes on a 2-core CPU, and
`make flywheel ITERS=3` scores four models. A larger set tells smaller gains apart from noise
(the intervals narrow as one over the square root of the tasks): ``-n 400`` halves them.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable

NAMES = ["Ava", "Ben", "Chloe", "Diego", "Elena", "Farah", "Gus", "Hana", "Ivan", "Jada",
         "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tomas"]
ITEMS = ["apples", "stickers", "marbles", "pencils", "cookies", "stamps", "shells", "books",
         "cards", "beads"]

Problem = tuple[str, int]


def _buy_and_give(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(12, 60), r.randint(5, 30)
    c = r.randint(3, a + b - 1)
    return (f"{name} has {a} {item}. {name} buys {b} more and then gives {c} to a friend. "
            f"How many {item} does {name} have now?", a + b - c)


def _rate_times_hours(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    rate, hours, days = r.randint(8, 25), r.randint(2, 8), r.randint(2, 6)
    return (f"{name} earns ${rate} an hour and works {hours} hours a day. How many dollars "
            f"does {name} earn in {days} days?", rate * hours * days)


def _boxes(r: random.Random) -> Problem:
    item = r.choice(ITEMS)
    boxes, per, extra = r.randint(3, 12), r.randint(4, 15), r.randint(1, 20)
    return (f"There are {boxes} boxes with {per} {item} in each box, and {extra} loose {item}. "
            f"How many {item} are there in all?", boxes * per + extra)


def _share(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    friends, each = r.randint(2, 9), r.randint(3, 14)
    left = r.randint(0, friends - 1)
    return (f"{name} shares {friends * each + left} {item} equally among {friends} friends "
            f"and keeps the {left} left over. How many {item} does each friend get?", each)


def _half_then_more(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    first = 2 * r.randint(10, 45)
    return (f"{name} collected {first} {item} in June and half as many in July. How many "
            f"{item} did {name} collect in June and July together?", first + first // 2)


def _change(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    price, count = r.randint(2, 9), r.randint(2, 8)
    paid = (price * count // 10 + 1 + r.randint(0, 3)) * 10
    return (f"{name} buys {count} notebooks at ${price} each and pays with ${paid}. How many "
            f"dollars of change does {name} get?", paid - price * count)


def _weeks(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    pages, times, weeks = r.randint(2, 12), r.randint(2, 5), r.randint(2, 10)
    return (f"{name} reads {pages} pages {times} times a week. How many pages does {name} read "
            f"in {weeks} weeks?", pages * times * weeks)


def _twice_as_many(r: random.Random) -> Problem:
    a, b = r.sample(NAMES, 2)
    item = r.choice(ITEMS)
    n, k = r.randint(4, 40), r.randint(2, 4)
    return (f"{a} has {n} {item}. {b} has {k} times as many {item} as {a}. How many {item} do "
            f"they have together?", n + k * n)


def _remaining(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    total = 10 * r.randint(6, 30)
    day1 = r.randint(5, total // 3)
    day2 = 2 * day1
    return (f"A book has {total} pages. {name} read {day1} pages on Monday and twice as many on "
            f"Tuesday. How many pages are left to read?", total - day1 - day2)


def _price_difference(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    bike, saved = r.randint(80, 400), r.randint(10, 70)
    weekly = r.randint(5, 20)
    weeks = r.randint(2, 6)
    have = saved + weekly * weeks
    bike = max(bike, have + 1)
    return (f"A bike costs ${bike}. {name} has saved ${saved} and saves ${weekly} more each week "
            f"for {weeks} weeks. How many more dollars does {name} need?", bike - have)


def _legs(r: random.Random) -> Problem:
    chickens, cows = r.randint(2, 20), r.randint(2, 15)
    return (f"A farm has {chickens} chickens and {cows} cows. How many legs do the animals "
            f"have in all?", 2 * chickens + 4 * cows)


def _minutes(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    per, laps = r.randint(3, 12), r.randint(3, 10)
    rest = r.randint(1, 9)
    return (f"{name} runs {laps} laps. Each lap takes {per} minutes, and {name} rests {rest} "
            f"minutes after the run. How many minutes is that in all?", per * laps + rest)


TEMPLATES: list[Callable[[random.Random], Problem]] = [
    _buy_and_give, _rate_times_hours, _boxes, _share, _half_then_more, _change, _weeks,
    _twice_as_many, _remaining, _price_difference, _legs, _minutes]


def generate(n: int = 100, seed: int = 0) -> list[dict]:
    """``n`` distinct problems as task records (``id``, ``query``, ``reference``), the same for
    the same ``n`` and ``seed``."""
    rng = random.Random(seed)
    tasks: list[dict] = []
    seen: set[str] = set()
    while len(tasks) < n:
        template = TEMPLATES[len(tasks) % len(TEMPLATES)]  # every kind equally often
        query, answer = template(rng)
        if query in seen:
            continue
        seen.add(query)
        tasks.append({"id": f"eval-{seed}-{len(tasks):04d}", "query": query,
                      "reference": str(answer), "metadata": {"kind": template.__name__[1:]}})
    return tasks


def main(argv: list[str] | None = None) -> int:
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=100, help="problems (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="the generator's seed (default 0)")
    parser.add_argument("-o", "--output", help="write here (default stdout)")
    args = parser.parse_args(argv)
    text = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in generate(args.n, args.seed))
    if args.output:
        from tracewheel.jsonl import atomic_path

        with atomic_path(args.output) as tmp:
            tmp.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
