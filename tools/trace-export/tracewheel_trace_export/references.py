"""Known-good answers from the user (``--references FILE``): a labelled set the team trusts,
joined into the exported tasks as their ``reference``.

The file is JSONL, one ``{"reference": ..., "id": ...}`` or ``{"reference": ..., "query": ...}``
per line. A task gets the reference of its id, else of its query text (whitespace aside), when
that text has exactly one reference: the same follow-up ("Please try again.") in two
conversations has two answers, and is matched by id only.
"""

from __future__ import annotations

import re
from collections import defaultdict

from tracewheel.errors import RecordError
from tracewheel.jsonl import read_jsonl


def _key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _check(record: dict) -> dict:
    reference = record.get("reference")
    if not isinstance(reference, (str, int, float)) or isinstance(reference, bool):
        raise RecordError("a reference record needs a `reference` (text or number)")
    if "id" not in record and not isinstance(record.get("query"), str):
        raise RecordError("a reference record needs an `id` or a `query` to match tasks by")
    return record


class References:
    def __init__(self, path: str):
        self.by_id: dict[str, str] = {}
        by_query: dict[str, set[str]] = defaultdict(set)
        # A bad line is named by its line number; trace-export's --skip-invalid is for the
        # database's tasks, not this file, so the error has no hint to use it.
        with open(path, "rb") as stream:
            for record in read_jsonl(stream, path, validate=_check, hint=None):
                reference = str(record["reference"])
                if "id" in record:
                    self.by_id[str(record["id"])] = reference
                else:
                    by_query[_key(record["query"])].add(reference)
        self.by_query = {q: next(iter(refs)) for q, refs in by_query.items() if len(refs) == 1}

    def reference_for(self, task: dict) -> str | None:
        found = self.by_id.get(task["id"])
        if found is None and isinstance(task.get("query"), str):
            found = self.by_query.get(_key(task["query"]))
        return found
