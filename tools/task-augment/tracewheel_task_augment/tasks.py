"""Task records in and out: which input tasks can serve as examples or be reworded, and the new
task records (docs/architecture.md) with their ``augment`` provenance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracewheel.ids import stable_id

from .checks import script_of
from .prompts import PROMPT_VERSION

_CONTEXT_ROLES = ("system", "developer")


@dataclass(frozen=True)
class Seed:
    """What the tool keeps of an input task that opens a conversation (the whole record is not
    kept: trajectories can be large)."""

    id: str
    query: str
    reference: Any  # the parent's reference answer as given (text, usually), or None
    system: tuple[dict, ...]  # its system messages, which a task made from it carries too
    script: str | None

    @property
    def system_text(self) -> str | None:
        texts = [m.get("content") for m in self.system if isinstance(m.get("content"), str)]
        return "\n\n".join(texts) if texts else None


def opens_a_conversation(record: dict) -> bool:
    """A request with no earlier user or assistant turn: it means the same on its own. A
    follow-up ("And its area?", "Thanks, correct!") does not, so it is no example to imitate
    and no request to reword."""
    messages = record.get("messages") or []
    return all(m.get("role") in _CONTEXT_ROLES for m in messages[:-1])


def seed_of(record: dict) -> Seed | None:
    """The record as a seed, or None when it cannot be one (a follow-up, an empty request)."""
    query = record.get("query")
    if not isinstance(query, str) or not query.strip() or not opens_a_conversation(record):
        return None
    system = tuple({"role": m["role"], "content": m.get("content")}
                   for m in (record.get("messages") or [])[:-1])
    reference = record.get("reference")
    return Seed(id=record["id"], query=query, system=system,
                reference=reference,
                script=script_of(query))


def new_task(*, method: str, query: str, key: str, index: int, parents: list[str],
             system: tuple[dict, ...] = (), reference: Any = None,
             source: dict | None = None, settings: Any = None, tag: tuple = ()) -> dict:
    """A generated task. Its id hashes the attempt's cache key (prompt, model, settings,
    seed), the item's place in the reply and its text: the same run gives the same ids."""
    query = query.strip()
    augment = {"method": method, "parents": parents, "source": source,
               "model": settings.model if settings else None, "prompt_version": PROMPT_VERSION,
               "seed": settings.seed if settings else None, "attempt": list(tag)}
    return {
        "id": stable_id(key, index, query, prefix="aug-"),
        "query": query,
        "messages": [*system, {"role": "user", "content": query}],
        "answer": None,
        "reference": reference,
        "feedback": [],
        "trajectory": [],
        "source": {"kind": "task-augment", "method": method},
        "augment": augment,
    }
