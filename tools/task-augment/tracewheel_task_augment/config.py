"""task-augment's settings: what every subcommand shares (GenerationConfig) and each
subcommand's own, as dataclasses with their defaults, stated once (the command line fills them;
tests and other code build them directly)."""

from __future__ import annotations

from dataclasses import dataclass

from tracewheel.cli import AskConfig


@dataclass(kw_only=True)
class GenerationConfig(AskConfig):
    """How every subcommand asks (AskConfig: where, how many at once, the cache), samples, and
    keeps new tasks new."""

    temperature: float = 0.8           # retries of unparseable replies use at least 0.7
    max_tokens: int = 1024             # response length of one request
    seed: int = 0                      # the choice of examples and the sampling
    request_seeds: bool = False        # send each request a seed derived from `seed`
    similarity: float = 0.8            # near-duplicate threshold (MinHash Jaccard, 5-grams)
    against: tuple[str, ...] = ()      # task corpora new tasks must not repeat
    history: str | None = None         # earlier runs' tasks [default: in the cache folder]
    use_history: bool = True


@dataclass
class ExpandConfig:
    count: int = 10                    # new tasks to write
    per_request: int = 5               # new tasks asked for in one request
    shots: int = 3                     # example tasks shown in one request
    max_attempts: int | None = None    # requests at most [default: 4 x what count needs, >= 10]


@dataclass
class ParaphraseConfig:
    count: int = 1                     # rewordings per input task
    max_attempts: int = 3              # requests per input task at most


@dataclass
class DocsConfig:
    count: int | None = None           # questions to write [default: PER_CHUNK per chunk]
    chunk_size: int = 2000             # characters of one excerpt at most
    per_request: int = 3               # questions asked for in one request
    shots: int = 3                     # with examples: examples shown in one request
    max_attempts: int | None = None    # requests at most [default: 4 x what count needs, >= 10]
