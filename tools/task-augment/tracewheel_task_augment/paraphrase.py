"""paraphrase: rewordings of existing tasks that keep their reference answers.

Input tasks are taken a batch at a time (so memory stays bounded however long the input). Each
task that opens a conversation gets one attempt asking for its missing rewordings; a task still
short of ``per_task`` after a round is asked again, listing what it already has, up to
``max_attempts`` attempts. A rewording must keep every number of the request (else its
reference may no longer hold), its language and roughly its length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .checks import changed_numbers, empty_or_echo, first_problem, off_length, wrong_language
from .engine import ROUND, Attempt, Engine
from .gate import Gate
from .prompts import paraphrase_messages
from .tasks import Seed, new_task


def _batches(seeds: Iterable[Seed], size: int) -> Iterator[list[Seed]]:
    batch: list[Seed] = []
    for s in seeds:
        batch.append(s)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def paraphrase(seeds: Iterable[Seed], *, per_task: int, engine: Engine, gate: Gate,
               max_attempts: int, source: dict | None = None) -> Iterator[dict]:
    """Up to ``per_task`` rewordings of each of ``seeds``, in input order, each with its
    parent's reference and system messages."""
    settings = engine.asker.settings
    for batch in _batches(seeds, ROUND):
        written: dict[str, list[str]] = {s.id: [] for s in batch}
        out: dict[str, list[dict]] = {s.id: [] for s in batch}
        for tries in range(max_attempts):
            plan = []
            for s in batch:
                missing = per_task - len(out[s.id])
                if missing <= 0:
                    continue
                messages = paraphrase_messages(s.query, missing, avoid=written[s.id])
                plan.append(Attempt("paraphrase", ("paraphrase", s.id, tries), messages,
                                    missing, s))
            if not plan:
                break
            for attempt, items in engine.run(plan):
                s = attempt.context
                size = len(s.query.strip())
                for i, item in enumerate(items):
                    if i >= attempt.want:
                        gate.unused()
                        continue
                    task = new_task(method="paraphrase", query=item["query"], key=attempt.key,
                                    index=i, parents=[s.id], system=s.system,
                                    reference=s.reference, source=source, settings=settings,
                                    tag=attempt.tag)
                    problem = first_problem(empty_or_echo(item["query"]),
                                            wrong_language(item["query"], s.script),
                                            off_length(item["query"], size, size),
                                            changed_numbers(item["query"], s.query))
                    if gate.admit(task, problem):
                        written[s.id].append(task["query"])
                        out[s.id].append(task)
        short = sum(1 for s in batch if len(out[s.id]) < per_task)
        if short:
            gate.summary.add("short of -n", short)
        for s in batch:  # in input order, whatever round gave them
            yield from out[s.id]
