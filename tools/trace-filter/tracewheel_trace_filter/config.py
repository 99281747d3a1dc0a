"""trace-filter's settings: what `filter` and `learn-rubrics` are asked to do, as dataclasses
with their defaults, stated once (the command line fills them, named as its options; tests and
other code build them directly)."""

from __future__ import annotations

from dataclasses import dataclass

from tracewheel.cli import MAX_THREAD, PARSE_RETRIES
from tracewheel.client import RETRIES, TIMEOUT
from tracewheel.judge import JudgeSettings

from .learn import LearnSettings


@dataclass
class AskConfig:
    """The options of both commands: the judge's endpoint, and how it is asked."""

    base_url: str | None = None        # default: the embedded model, served on first use
    model: str | None = None
    api_key: str | None = None
    timeout: float = TIMEOUT
    retries: int = RETRIES
    max_thread: int = MAX_THREAD
    parse_retries: int = PARSE_RETRIES
    no_structured: bool = False
    cache_path: str | None = None
    no_cache: bool = False


@dataclass
class FilterConfig(AskConfig):
    """What `trace-filter filter` is asked to do; its options, named as on the command line."""

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


@dataclass
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
