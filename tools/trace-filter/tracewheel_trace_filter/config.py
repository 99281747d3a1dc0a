"""trace-filter's settings: what `filter` and `learn-rubrics` are asked to do, as dataclasses
with their defaults, stated once (the command line fills them, named as its options; tests and
other code build them directly)."""

from __future__ import annotations

from dataclasses import dataclass

from tracewheel.cli import MAX_THREAD, PARSE_RETRIES
from tracewheel.client import RETRIES, TIMEOUT

from .learn import LearnSettings


@dataclass
class FilterOptions:
    """What `trace-filter filter` is asked to do; its options, named as on the command line."""

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    timeout: float = TIMEOUT
    retries: int = RETRIES
    rubrics: str | None = None
    use_judge: bool = True
    temperature: float = 0.0
    max_tokens: int = 512
    max_thread: int = MAX_THREAD
    parse_retries: int = PARSE_RETRIES
    no_structured: bool = False
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
    cache_path: str | None = None
    no_cache: bool = False


@dataclass
class LearnOptions:
    """What `trace-filter learn-rubrics` is asked to do; its options, as on the command line."""

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    timeout: float = TIMEOUT
    retries: int = RETRIES
    rubrics: str | None = None         # the text to start from
    candidates: int = LearnSettings.candidates
    rounds: int = LearnSettings.rounds
    shots: int = LearnSettings.shots
    seed: int = LearnSettings.seed
    temperature: float = LearnSettings.temperature
    max_tokens: int = LearnSettings.max_tokens
    max_thread: int = MAX_THREAD
    parse_retries: int = LearnSettings.parse_retries
    no_structured: bool = False
    scores: str | None = None
    cache_path: str | None = None
    no_cache: bool = False
