"""Rule filters: cheap checks that need no LLM. Each returns None to keep a record, or the reason
to drop it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flywheel.answers import boxed_values

Rule = Callable[[dict], "str | None"]


def answer_text(record: dict) -> str:
    answer: Any = record.get("answer")
    return answer if isinstance(answer, str) else ""


def require_boxed(record: dict) -> str | None:
    return None if boxed_values(answer_text(record)) else "no \\boxed{} in the answer"


def require_regex(pattern: str) -> Rule:
    compiled = re.compile(pattern)

    def rule(record: dict) -> str | None:
        if compiled.search(answer_text(record)):
            return None
        return f"answer does not match /{pattern}/"

    return rule


def length_between(min_len: int | None, max_len: int | None) -> Rule:
    def rule(record: dict) -> str | None:
        n = len(answer_text(record))
        if min_len is not None and n < min_len:
            return f"answer shorter than {min_len} characters ({n})"
        if max_len is not None and n > max_len:
            return f"answer longer than {max_len} characters ({n})"
        return None

    return rule


def drop_errors(record: dict) -> str | None:
    if record.get("status") == "error":
        return f"turn failed: {record.get('error') or 'error'}"
    if record.get("answer") is None:
        return "no answer"
    return None


def require_reference(record: dict) -> str | None:
    reference = record.get("reference")
    return None if reference is not None and str(reference).strip() else "no reference"
