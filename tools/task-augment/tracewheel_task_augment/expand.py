"""expand: new tasks on the topics and in the style of a few example tasks.

Each attempt shows the model a few examples in one language: an *anchor*, taken in turn from a
seeded shuffle of all examples (so every example gets its share), and others of the same
writing system drawn with the seed. Tasks it already produced from the same anchor are listed
as ones not to repeat. The anchor's system prompt, if any, is the context shown and the one the
new task carries.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from .checks import empty_or_echo, first_problem, off_length, wrong_language
from .engine import Attempt, Engine, round_size
from .gate import Gate
from .prompts import expand_messages
from .tasks import Seed, new_task

AVOID = 5  # earlier tasks of an anchor listed in its next prompts


@dataclass(frozen=True)
class Shots:
    anchor: Seed
    examples: tuple[Seed, ...]  # as shown, anchor included


def default_max_attempts(count: int, per_request: int) -> int:
    return max(10, 4 * math.ceil(count / per_request))


def _sample(order: list[Seed], groups: dict, index: int, shots: int, seed: int) -> Shots:
    anchor = order[index % len(order)]
    rng = random.Random(f"expand:{seed}:{index}")
    others = [s for s in groups[anchor.script] if s.id != anchor.id]
    chosen = [anchor, *rng.sample(others, min(shots - 1, len(others)))]
    rng.shuffle(chosen)
    return Shots(anchor, tuple(chosen))


def expand(seeds: list[Seed], *, count: int, engine: Engine, gate: Gate, per_request: int,
           shots: int, max_attempts: int | None, seed: int,
           source: dict | None = None) -> Iterator[dict]:
    """Up to ``count`` new tasks like ``seeds``, in at most ``max_attempts`` attempts."""
    if not seeds:
        return
    budget = max_attempts or default_max_attempts(count, per_request)
    order = list(seeds)
    random.Random(f"expand-order:{seed}").shuffle(order)
    groups: dict = defaultdict(list)
    for s in seeds:
        groups[s.script].append(s)
    written: dict[str, list[str]] = defaultdict(list)
    settings = engine.asker.settings
    made = produced = 0
    while produced < count and made < budget:
        size = round_size(count - produced, produced, made, per_request, budget - made)
        plan = []
        for index in range(made, made + size):
            chosen = _sample(order, groups, index, shots, seed)
            messages = expand_messages([s.query for s in chosen.examples], per_request,
                                       system=chosen.anchor.system_text,
                                       avoid=written[chosen.anchor.id][-AVOID:])
            plan.append(Attempt("expand", ("expand", index), messages, per_request, chosen))
        made += size
        for attempt, items in engine.run(plan):
            chosen = attempt.context
            lengths = [len(s.query.strip()) for s in chosen.examples]
            for i, item in enumerate(items):
                if i >= attempt.want or produced >= count:
                    gate.unused()
                    continue
                task = new_task(method="expand", query=item["query"], key=attempt.key, index=i,
                                parents=[chosen.anchor.id] + [s.id for s in chosen.examples
                                                              if s.id != chosen.anchor.id],
                                system=chosen.anchor.system, source=source,
                                settings=settings, tag=attempt.tag)
                problem = first_problem(empty_or_echo(item["query"]),
                                        wrong_language(item["query"], chosen.anchor.script),
                                        off_length(item["query"], min(lengths), max(lengths)))
                if gate.admit(task, problem):
                    produced += 1
                    written[chosen.anchor.id].append(task["query"])
                    yield task
    if produced < count:
        gate.echo(f"expand: stopped at {produced} of {count} tasks after {made} attempts "
                  f"(--max-attempts {budget}): the rest were duplicates, off-spec or "
                  "unparseable; more examples, a higher --temperature or a stronger model help")
