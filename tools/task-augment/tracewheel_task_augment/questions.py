"""docs: questions grounded in documents, each with the excerpt that supports it.

Attempts go through the chunks in a seeded order, round after round, and list the questions a
chunk already gave. The model quotes its evidence; a quote found in the chunk (compared after
normalising case, width and punctuation) becomes the task's excerpt, else the whole chunk is.
The model's answer becomes the task's ``reference`` only when the quote is in the chunk and
holds the answer: a reference must be one you would defend.
"""

from __future__ import annotations

import math
import random
import unicodedata
from collections import defaultdict
from collections.abc import Iterator

from tracewheel.dedup import normalize_text

from .checks import empty_or_echo, first_problem, points_at_excerpt, wrong_language
from .documents import Chunk, Document
from .engine import Attempt, Engine, round_size
from .gate import Gate
from .prompts import PLACEHOLDERS, docs_messages
from .tasks import Seed, new_task

AVOID = 8  # questions a chunk already gave, listed in its next prompts
PER_CHUNK = 3  # the default -n: this many per chunk


def default_max_attempts(count: int, per_request: int) -> int:
    return max(10, 4 * math.ceil(count / per_request))


def _normalized_with_map(text: str) -> tuple[str, list[int]]:
    """``normalize_text``-like text (casefolded, width-folded, punctuation runs as one space) and,
    for each of its characters, the index in ``text`` it came from."""
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        for c in unicodedata.normalize("NFKC", ch).casefold():
            if c.isalnum():
                out.append(c)
                where.append(i)
            elif out and out[-1] != " ":
                out.append(" ")
                where.append(i)
    while out and out[-1] == " ":
        out.pop()
        where.pop()
    return "".join(out), where


def find_quote(quote: str | None, text: str) -> str | None:
    """The span of ``text`` that ``quote`` copies (up to case, width and punctuation), or None."""
    if not quote:
        return None
    needle, _ = _normalized_with_map(quote)
    if len(needle) < 8:  # too short to tell a quote from a coincidence
        return None
    hay, where = _normalized_with_map(text)
    at = hay.find(needle)
    if at < 0:
        return None
    return text[where[at]:where[at + len(needle) - 1] + 1]


def supports(answer: str, quote: str) -> bool:
    """Does ``quote`` hold ``answer``: as a run of text, or every word of it?"""
    a, q = normalize_text(answer), normalize_text(quote)
    if not a:
        return False
    if a.replace(" ", "") in q.replace(" ", ""):
        return True
    return set(a.split()) <= set(q.split())


def reference_and_excerpt(item: dict, chunk: Chunk) -> tuple[str | None, str, str]:
    """(reference or None, excerpt, "quote" or "chunk") for one reply item."""
    quote = find_quote(item.get("evidence"), chunk.text)
    answer = item.get("answer")
    if isinstance(answer, str):
        answer = answer.strip()
        if not answer or normalize_text(answer) in {normalize_text(p) for p in PLACEHOLDERS}:
            answer = None
    if quote is None:
        return None, chunk.text, "chunk"
    return (answer if answer and supports(answer, quote) else None), quote, "quote"


def _order(chunks: list[Chunk], seed: int) -> list[Chunk]:
    order = list(chunks)
    random.Random(f"docs-order:{seed}").shuffle(order)
    return order


def questions(documents: list[Document], *, count: int, engine: Engine, gate: Gate,
              per_request: int, max_attempts: int | None, seed: int, style: list[Seed],
              shots: int) -> Iterator[dict]:
    """Up to ``count`` questions from the chunks of ``documents``."""
    chunks = [c for d in documents for c in d.chunks]
    if not chunks:
        return
    digests = {d.path: d.sha256 for d in documents}
    budget = max_attempts or default_max_attempts(count, per_request)
    order = _order(chunks, seed)
    written: dict[tuple[str, int], list[str]] = defaultdict(list)
    settings = engine.asker.settings
    made = produced = 0
    while produced < count and made < budget:
        size = round_size(count - produced, produced, made, per_request, budget - made)
        plan = []
        for index in range(made, made + size):
            chunk = order[index % len(order)]
            rng = random.Random(f"docs:{seed}:{index}")
            examples = rng.sample(list(style), min(shots, len(style))) if style else []
            messages = docs_messages(chunk.text, per_request, document=chunk.document,
                                     section=chunk.section, style=[s.query for s in examples],
                                     avoid=written[(chunk.document, chunk.index)][-AVOID:])
            plan.append(Attempt("docs", ("docs", index), messages, per_request,
                                (chunk, examples)))
        made += size
        for attempt, items in engine.run(plan):
            chunk, examples = attempt.context
            for i, item in enumerate(items):
                if i >= attempt.want or produced >= count:
                    gate.unused()
                    continue
                reference, excerpt, kind = reference_and_excerpt(item, chunk)
                source = {"document": chunk.document, "sha256": digests[chunk.document],
                          **chunk.location(), "excerpt": excerpt, "excerpt_kind": kind}
                task = new_task(method="docs", query=item["query"], key=attempt.key, index=i,
                                parents=[s.id for s in examples], reference=reference,
                                source=source, settings=settings, tag=attempt.tag)
                problem = first_problem(empty_or_echo(item["query"]),
                                        points_at_excerpt(item["query"]),
                                        wrong_language(item["query"], chunk.script))
                if gate.admit(task, problem):
                    produced += 1
                    written[(chunk.document, chunk.index)].append(task["query"])
                    if reference is not None:
                        gate.summary.add("with reference")
                    yield task
    if produced < count:
        gate.echo(f"docs: stopped at {produced} of {count} tasks after {made} attempts "
                  f"(--max-attempts {budget}) over {len(chunks)} chunks: the rest were "
                  "duplicates, off-spec or unparseable; more documents, a higher --temperature "
                  "or a stronger model help")
