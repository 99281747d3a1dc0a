"""Rule filters: cheap checks that need no LLM. Each returns None to keep a record, or the reason
to drop it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tracewheel.answers import Check, boxed_values, check_answer
from tracewheel.errors import RecordError

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
    return None if has_reference(record) else "no reference"


class ReferenceCheck:
    """``--check-reference``: the answer's final value against the task's reference. A record
    that contradicts it is dropped; one the check cannot decide is dropped only with
    ``undecided="drop"``. The check of each record is kept until ``take`` asks for it, so the
    verdict can carry it and the summary can count it."""

    def __init__(self, undecided: str = "keep"):
        self.undecided = undecided
        self._checks: dict[int, Check] = {}

    def validate(self, record: dict) -> None:
        """An empty answer beside a reference is a broken record, not a wrong answer: a turn
        that gave no answer has ``answer: null``."""
        answer = record.get("answer")
        if isinstance(answer, str) and not answer.strip() and has_reference(record):
            raise RecordError("empty answer: nothing to check against the reference (a turn "
                              "without an answer has answer null)")

    def __call__(self, record: dict) -> str | None:
        check = check_answer(record.get("answer"), record.get("reference"))
        self._checks[id(record)] = check
        if check.outcome == "contradict" or (check.outcome == "undecided" and
                                             self.undecided == "drop"):
            return f"{check.outcome}: {check.reason}"
        return None

    def take(self, record: dict) -> Check | None:
        """The check of ``record``, once, if the check saw it (an earlier rule may not)."""
        return self._checks.pop(id(record), None)


def has_reference(record: dict) -> bool:
    reference = record.get("reference")
    return reference is not None and bool(str(reference).strip())


# The rules by name: rule_list's flags have the rules' own names.
_BY_NAME: dict[str, Any] = {"drop-errors": drop_errors, "require-reference": require_reference,
                            "require-boxed": require_boxed, "require-regex": require_regex}


def rule_list(*, drop_errors: bool = False, require_reference: bool = False,
              check: ReferenceCheck | None = None, min_len: int | None = None,
              max_len: int | None = None, require_boxed: bool = False,
              require_regex: str | None = None) -> list[tuple[str, Rule]]:
    """The chosen rules in the order they run: the first that fails drops the record."""
    chosen: list[tuple[str, Rule]] = []
    if drop_errors:
        chosen.append(("drop-errors", _BY_NAME["drop-errors"]))
    if require_reference:
        chosen.append(("require-reference", _BY_NAME["require-reference"]))
    if check is not None:
        chosen.append(("check-reference", check))
    if min_len is not None or max_len is not None:
        chosen.append(("length", length_between(min_len, max_len)))
    if require_boxed:
        chosen.append(("require-boxed", _BY_NAME["require-boxed"]))
    if require_regex:
        chosen.append(("require-regex", _BY_NAME["require-regex"](require_regex)))
    return chosen
