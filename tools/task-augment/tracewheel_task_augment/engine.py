"""Asking the generating model: one *attempt* is one prompt, asked again (at most
``parse_retries`` times) until its reply parses; its outcome (the parsed items, or why none) is
cached under a key of everything that shapes the reply, so a re-run with the same settings makes
no LLM calls and gives the same records.

Attempts run in *rounds*: a method plans a list of attempts from what it has accepted so far,
the engine runs them concurrently and hands back their outcomes in plan order, and the method
plans the next round. What gets asked therefore depends only on earlier outcomes, never on
timing or on which replies came from the cache: that is what makes a cached re-run complete.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tracewheel.ask import JsonAsker, Reply, ReplyError
from tracewheel.cache import Cache, cache_key
from tracewheel.cli import Summary
from tracewheel.client import Endpoint, api_errors, bounded_map, describe_api_error

from .prompts import PROMPT_VERSION, reply_schema
from .replies import parse_reply

if TYPE_CHECKING:
    import openai

# Attempts planned at once at most, whatever the concurrency: a later round's prompts list what
# earlier rounds produced (so the model does not repeat it), and the plan must not depend on
# --max-thread for a re-run with other concurrency to find its replies in the cache.
ROUND = 64


@dataclass(frozen=True, kw_only=True)
class AskSettings:
    """What every attempt of a run shares; all of it but ``max_thread`` is in the cache key.
    No defaults here: run.py fills it from GenerationConfig, where they are stated."""

    endpoint: Endpoint
    temperature: float
    max_tokens: int
    parse_retries: int
    structured: bool
    seed: int
    max_thread: int
    # Send each request a sampling seed (derived from ``seed``): reproducible without the
    # cache. Off by default (GenerationConfig): vLLM's CPU build can kill its engine on
    # seeded requests under load ("CPU Generator does not use offset").
    request_seeds: bool

    @property
    def model(self) -> str:
        return self.endpoint.model or ""


@dataclass
class Attempt:
    """One prompt: ``tag`` names it within its method's plan (part of its key and its sampling
    seed, so that two attempts with the same prompt still sample differently); ``context`` is
    what the method needs to turn the reply's items into tasks."""

    method: str
    tag: tuple
    messages: list[dict]
    want: int
    context: Any = None
    key: str = ""


@dataclass
class Outcome:
    items: list[dict] | None = None
    reason: str | None = None  # why there are no items (a ReplyError's reason)
    detail: str | None = None
    requests: int = 0          # LLM calls made for it (0: from the cache)
    retries: int = 0           # of those, HTTP retries (429, 5xx, timeouts)
    cached: bool = False

    def to_cache(self) -> dict:
        if self.items is not None:
            return {"items": self.items}
        return {"reason": self.reason, "detail": self.detail}

    @classmethod
    def from_cache(cls, value: dict) -> Outcome:
        return cls(items=value.get("items"), reason=value.get("reason"),
                   detail=value.get("detail"), cached=True)


class EndpointFailure(Exception):
    """The endpoint failed after its retries (or refused the request); ``error`` says how."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def request_seed(key: str, attempt: int) -> int:
    """A sampling seed for one request: the same on every run, different for each retry."""
    return int(cache_key(key, attempt)[:8], 16) & 0x7FFFFFFF


class Asker:
    """Sends an attempt's requests through the shared JSON client (``tracewheel.ask``).
    ``client()`` gives the OpenAI client (a LazyClient: the embedded server starts with the
    first request, not before). Thread-safe."""

    def __init__(self, settings: AskSettings, client: Callable[[], openai.OpenAI]):
        self.settings = settings
        self.client = client
        self.json = JsonAsker(settings.endpoint, client, structured=settings.structured,
                              seeds=settings.request_seeds)

    def key(self, attempt: Attempt) -> str:
        s = self.settings
        return cache_key(PROMPT_VERSION, attempt.method, attempt.tag, attempt.messages,
                         attempt.want, s.model, s.temperature, s.max_tokens, s.parse_retries,
                         s.structured, s.seed, s.request_seeds)

    def __call__(self, attempt: Attempt) -> Outcome:
        """The attempt's items, or the reason of its last unparseable reply. Endpoint errors
        (after their own retries) propagate."""
        s = self.settings
        outcome = Outcome()

        def count(reply: Reply) -> None:
            outcome.requests += reply.requests  # every request sent, HTTP retries included
            outcome.retries += reply.retries

        try:
            outcome.items = self.json.ask_reply(
                attempt.messages, lambda r: parse_reply(r.text, attempt.method, r.finish_reason),
                schema=reply_schema(attempt.method, attempt.want), name="tasks",
                temperature=s.temperature, max_tokens=s.max_tokens,
                parse_retries=s.parse_retries, seed=lambda n: request_seed(attempt.key, n),
                count=count)
        except ReplyError as err:
            outcome.reason, outcome.detail = err.reason, str(err)
        return outcome


@dataclass
class Engine:
    """Runs rounds of attempts through the cache and the endpoint, counting into ``summary``:
    ``requests`` (LLM calls), ``cached`` (attempts answered from the cache), ``retries`` (HTTP
    retries) and ``unparseable`` attempts by reason."""

    asker: Asker
    cache: Cache | None
    summary: Summary
    echo: Callable[[str], None] = field(default=lambda msg: None)
    verbose: int = 0

    def run(self, attempts: Iterable[Attempt]) -> Iterator[tuple[Attempt, list[dict]]]:
        """Each attempt with its items (an empty list when its replies never parsed), in order."""
        def keyed() -> Iterator[Attempt]:
            for attempt in attempts:
                attempt.key = self.asker.key(attempt)
                yield attempt

        def ready(attempt: Attempt) -> Outcome | None:
            hit = self.cache.get(attempt.key) if self.cache is not None else None
            return Outcome.from_cache(hit) if hit is not None else None

        workers = self.asker.settings.max_thread
        # A reply that came back after the run had to stop is cached too, not paid for again.
        results = bounded_map(self.asker, keyed(), workers=workers, ready=ready,
                              abandoned=self._remember)
        for attempt, result in results:
            if isinstance(result, BaseException):
                if refused_request(result):  # this request only: the others may go through
                    self.summary.add("refused", reason=f"HTTP {result.status_code}")
                    self.echo(f"request refused ({attempt.method} {attempt.tag}): "
                              f"{describe_api_error(result, self.asker.settings.endpoint)[:300]}")
                    yield attempt, []
                    continue
                results.close()  # replies that came back meanwhile go into the cache
                if isinstance(result, api_errors()):
                    raise EndpointFailure(result) from result
                raise result
            self._count(attempt, result)
            yield attempt, result.items or []

    def _remember(self, attempt: Attempt, outcome: Outcome) -> None:
        if not outcome.cached and self.cache is not None:
            self.cache.put(attempt.key, outcome.to_cache())

    def _count(self, attempt: Attempt, outcome: Outcome) -> None:
        self.summary.add("requests", outcome.requests)
        self.summary.add("cached", int(outcome.cached))
        if outcome.retries:
            self.summary.add("retries", outcome.retries)
        self._remember(attempt, outcome)
        if outcome.items is None:
            self.summary.add("unparseable", reason=outcome.reason or "no reply")
            if self.verbose:
                self.echo(f"unparseable reply ({attempt.method} {attempt.tag}): {outcome.detail}")


def refused_request(err: BaseException) -> bool:
    """A refusal of this one request (too large, malformed for the server: 400, 413, 422), not
    of every request (a wrong key or model: 401, 403, 404), which ends the run."""
    return getattr(err, "status_code", None) in (400, 413, 422)


def round_size(remaining: int, produced: int, made: int, per_request: int, left: int) -> int:
    """Attempts for the next round of a method that wants ``remaining`` more tasks: as many as
    the yield so far (tasks per attempt, at least a quarter of ``per_request``) says it takes,
    at most ROUND and at most the ``left`` of the attempt budget."""
    rate = per_request if made == 0 else min(per_request, max(produced / made, per_request / 4))
    return max(0, min(math.ceil(remaining / rate), ROUND, left))
