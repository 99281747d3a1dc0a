"""trace-filter's settings: what `filter` and `learn-rubrics` are asked to do, as dataclasses
with their defaults, stated once (the command line fills them, named as its options; tests and
other code build them directly)."""

from __future__ import annotations

from dataclasses import dataclass

from tracewheel.cli import AskConfig
from tracewheel.judge import JudgeSettings

from .learn import LearnSettings


@dataclass(kw_only=True)
class FilterConfig(AskConfig):
    """What `trace-filter filter` is asked to do: how it asks (AskConfig, the judge's endpoint
    and its asking), then its own options, named as on the command line."""

    rubrics: str | None = None
    use_judge: bool = True
    temperature: float = JudgeSettings.temperature
    max_tokens: int = JudgeSettings.max_tokens
    print_reason: bool = False
    require_boxed: bool = False
    require_regex: str | None = None
    min_len: int | None = None
    max_len: int | None = None
    drop_errors: bool = False
    require_reference: bool = False
    check_reference: bool = False
    undecided: str | None = None       # keep or drop what the reference check cannot decide
    dedup: bool = False
    similarity: float = 0.8
    against: str | None = None
    annotate: bool = False
    invert: bool = False
    unordered: bool = False


@dataclass(kw_only=True)
class LearnConfig(AskConfig):
    """What `trace-filter learn-rubrics` is asked to do; its options, as on the command line."""

    rubrics: str | None = None         # the text to start from
    candidates: int = LearnSettings.candidates
    rounds: int = LearnSettings.rounds
    shots: int = LearnSettings.shots
    seed: int = LearnSettings.seed
    temperature: float = LearnSettings.temperature
    max_tokens: int = LearnSettings.max_tokens
    parse_retries: int = LearnSettings.parse_retries
    scores: str | None = None
