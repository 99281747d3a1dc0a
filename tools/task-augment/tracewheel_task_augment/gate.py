"""The last step of every generated task: off-spec or duplicate, it is counted with its reason
(and shown with -v); otherwise it is counted as produced and written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tracewheel.cli import Summary

from .novelty import Novelty


@dataclass
class Gate:
    novelty: Novelty
    summary: Summary
    echo: Callable[[str], None] = field(default=lambda msg: None)
    verbose: int = 0

    def admit(self, task: dict, problem: str | None) -> bool:
        """True when ``task`` (whose checks found ``problem``, or None) is to be written."""
        method = task["augment"]["method"]
        if problem is None:
            problem = self.novelty.check(task, method)
            key = "duplicate"
        else:
            key = "off-spec"
        if problem is not None:
            self.summary.add(key, reason=problem)
            if self.verbose:
                self.echo(f"rejected ({key}: {problem}): {task['query'][:200]!r}")
            return False
        self.summary.add("produced")
        return True

    def unused(self, n: int = 1) -> None:
        """Items beyond what was asked for, or beyond -n: neither checked nor written."""
        self.summary.add("unused", n)
