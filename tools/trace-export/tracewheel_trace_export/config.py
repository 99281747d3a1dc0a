"""trace-export's settings, as one dataclass with its defaults (the command line fills it; tests
and other code build it directly)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

UNITS = ("turn", "call", "run")


@dataclass
class ExportConfig:
    unit: str = "turn"                 # one record per agent turn, per LLM call, or per run
    projects: tuple[str, ...] = ()     # only these projects (empty: all)
    runs: tuple[str, ...] = ()         # only these runs, by id or name
    agents: tuple[str, ...] = ()       # only these agents' turns
    since: datetime | None = None      # only turns that started at or after (UTC)
    until: datetime | None = None      # only turns that started before (UTC)
    status: str | None = None          # "ok" or "error": only such turns
    state: str | None = None           # a file of what earlier runs exported: only new turns
    settle: float = 300.0              # with state: seconds before a run's last turn is final
    timeout: float = 30.0              # seconds to wait for a database Studio is writing
    references: str | None = None      # JSONL of known-good answers, by id or query
