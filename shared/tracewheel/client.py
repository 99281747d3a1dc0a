"""OpenAI-compatible endpoints: settings (flags, then environment, then config file), a client
factory, retries with exponential backoff and jitter, and bounded concurrency that keeps input
order. API keys never appear in messages: ``redact`` scrubs them from any text we print."""

from __future__ import annotations

import concurrent.futures as cf
import json
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .errors import TracewheelError
from .models import EMBEDDED_MODEL

if TYPE_CHECKING:
    import openai

T = TypeVar("T")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

class MalformedReply(Exception):
    """An HTTP 200 whose body is not a chat completion: an HTML page from a proxy or gateway,
    broken JSON, a JSON list. Retried like a 5xx; what still fails is the request's error."""


TIMEOUT, RETRIES = 60.0, 4  # an endpoint's defaults: seconds to wait for a response; retries


def retryable() -> tuple[type[BaseException], ...]:
    """The failures worth another try: 429, 5xx, timeouts, dropped connections (a server
    restarting), malformed replies. A function, so that importing this module does not import
    openai (most of a tool's start-up time; a run answered from its cache never needs it)."""
    import openai

    return (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
            openai.APIConnectionError, MalformedReply)


def api_errors() -> tuple[type[BaseException], ...]:
    """Every failure an endpoint can answer with: retryable ones and refusals (4xx)."""
    import openai

    return (openai.APIError, *retryable())


@dataclass(frozen=True)
class Endpoint:
    """Where to send chat completions. ``api_key`` is kept out of repr and messages."""

    base_url: str | None
    model: str | None
    api_key: str | None = None
    timeout: float = TIMEOUT
    retries: int = RETRIES

    def __repr__(self) -> str:
        return f"Endpoint(base_url={self.base_url!r}, model={self.model!r}, api_key=***)"

    def redact(self, text: str) -> str:
        return redact(text, self.api_key)


def redact(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def endpoint_options(f: F) -> F:
    """``--base-url``, ``--model``, ``--api-key``, ``--timeout``, ``--retries``: flags, then the
    environment (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``TRACEWHEEL_MODEL``), then --config."""
    f = click.option("--retries", type=click.IntRange(0), default=RETRIES, show_default=True,
                     help="Retries of a request that failed with 429, 5xx or a timeout.")(f)
    f = click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=TIMEOUT,
                     show_default=True, help="Seconds to wait for one response.")(f)
    f = click.option("--api-key", envvar="OPENAI_API_KEY", show_envvar=True,
                     help="API key of the endpoint (never logged).")(f)
    f = click.option("--model", envvar="TRACEWHEEL_MODEL", show_envvar=True,
                     help="Model name at the endpoint.")(f)
    f = click.option("--base-url", envvar="OPENAI_BASE_URL", show_envvar=True,
                     help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")(f)
    return f


def make_client(endpoint: Endpoint) -> openai.OpenAI:
    """An OpenAI client whose own retries are off: ``call_with_retries`` does them, counted."""
    import openai

    if not endpoint.base_url:
        raise TracewheelError("no endpoint: give --base-url or set OPENAI_BASE_URL")
    return openai.OpenAI(
        base_url=endpoint.base_url,
        api_key=endpoint.api_key or "EMPTY",  # vLLM without --api-key accepts any key
        timeout=endpoint.timeout,
        max_retries=0,
    )


def chat(client: openai.OpenAI, body: dict[str, Any]) -> dict[str, Any]:
    """POST a chat completion ``body`` and return the reply as plain JSON data.

    It goes through the SDK's own transport (auth, timeouts, its error types: RateLimitError,
    APIStatusError, ...) but skips its typed request transform and response models, which cost
    a few milliseconds of CPU per call: at hundreds of calls a second that is the bottleneck.
    vLLM's extra fields (``prompt_token_ids``, ``token_ids``) stay plain keys. A body that is
    not a chat completion raises MalformedReply.
    """
    try:
        reply = client.post("/chat/completions", body=body, cast_to=object)
    except json.JSONDecodeError as err:
        raise MalformedReply(f"the reply is not valid JSON ({err.msg} at column {err.colno})") \
            from None
    if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
        shown = reply if isinstance(reply, str) else json.dumps(reply)[:200]
        kind = "text" if isinstance(reply, str) else f"a JSON {type(reply).__name__}"
        raise MalformedReply(f"the reply is {kind}, not a chat completion: "
                             f"{' '.join(str(shown).split())[:120]!r}")
    for i, choice in enumerate(reply["choices"]):
        message = choice.get("message", {}) if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            what = f"choices[{i}]" if not isinstance(choice, dict) else f"choices[{i}].message"
            raise MalformedReply(f"the reply is not a chat completion: its {what} is not "
                                 f"an object: {json.dumps(choice)[:120]!r}")
    return reply


def message_text(reply: dict[str, Any]) -> str | None:
    """The text of the first choice of a chat completion reply (None when it has none)."""
    choices = reply.get("choices") or []
    return (choices[0].get("message") or {}).get("content") if choices else None


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 20.0) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * (2 ** attempt)))


RETRY_STATUS = frozenset({429, 500, 502, 503, 504})  # HTTP statuses worth another try
# Set while a bounded_map's caller has stopped (a signal, a failure): the calls still in flight
# on its threads make no more retries, and their waits end at once. Cleared once they have
# ended: a later call in the same process (a library user's, a test's) retries again.
STOPPING = threading.Event()
BASE_DELAY, MAX_DELAY = 0.5, 20.0


def retry_delay(attempt: int, retry_after: str | None = None, base: float = BASE_DELAY,
                cap: float = MAX_DELAY) -> float:
    """The wait before retry ``attempt + 1``: the server's Retry-After (within ``cap``), else
    full-jitter backoff. The one policy of every client here, the recorder's included."""
    try:
        if retry_after is not None:
            return min(float(retry_after), cap)
    except ValueError:
        pass
    return backoff_delay(attempt, base, cap)


def _retry_after(err: Exception) -> str | None:
    response = getattr(err, "response", None)
    return response.headers.get("retry-after") if response is not None else None


def call_with_retries(
    fn: Callable[[], R],
    *,
    retries: int = 4,
    base_delay: float = BASE_DELAY,
    max_delay: float = MAX_DELAY,
    on_retry: Callable[[int, Exception, float], None] | None = None,
    sleep: Callable[[float], Any] = STOPPING.wait,
) -> R:
    """Run ``fn``; on 429, 5xx, timeouts and dropped connections wait and try again, up to
    ``retries`` more times. A server's Retry-After is honoured (within ``max_delay``). Once
    the run is stopping (STOPPING), no retry is made."""
    transient = retryable()
    for attempt in range(retries + 1):
        try:
            return fn()
        except transient as err:
            if attempt == retries or STOPPING.is_set():
                raise
            delay = retry_delay(attempt, _retry_after(err), base_delay, max_delay)
            if on_retry is not None:
                on_retry(attempt + 1, err, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def describe_api_error(err: Exception, endpoint: Endpoint) -> str:
    """One line for an endpoint failure, with the key scrubbed."""
    status = getattr(err, "status_code", None)
    kind = f"HTTP {status}" if status else "malformed reply" if isinstance(
        err, MalformedReply) else type(err).__name__
    return endpoint.redact(f"{endpoint.base_url}: {kind}: {err}")


def bounded_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    ordered: bool = True,
    ready: Callable[[T], Any] | None = None,
    abandoned: Callable[[T, R], None] | None = None,
) -> Iterator[tuple[T, R | BaseException]]:
    """Apply ``fn`` to ``items`` on ``workers`` threads; yield ``(item, result or exception)``.

    At most ``2 * workers`` calls are in flight and at most that many finished results wait
    behind a slow one, so memory stays bounded however long the input. With ``ordered`` results
    come in input order, else as they finish. ``ready(item)``, when given and not None, is the
    item's result without a call (a cache hit, a rule's verdict): it costs no thread. Exceptions
    are yielded, not raised, so the caller can write every finished result before it stops.
    When the caller stops early (closes the iterator), the calls not begun are cancelled, and
    each call that already succeeded but was not yet yielded goes to ``abandoned(item,
    result)``, so what was paid for can be kept (a cache) rather than lost.
    """
    window = max(1, 2 * workers)
    it = iter(items)
    pending: deque[list] = deque()  # [item, future or None, result]
    in_flight = 0
    STOPPING.clear()
    pool = cf.ThreadPoolExecutor(max_workers=workers)
    completed = False

    def fill() -> None:
        nonlocal in_flight
        while in_flight < window and len(pending) < 4 * window:
            try:
                item = next(it)
            except StopIteration:
                return
            known = ready(item) if ready is not None else None
            if known is not None:
                pending.append([item, None, known])
            else:
                pending.append([item, pool.submit(fn, item), None])
                in_flight += 1

    fill()
    try:
        while pending:
            entry = _take(pending, ordered)
            in_flight -= entry[1] is not None
            yield entry[0], _outcome(entry)
            fill()
        completed = True
    finally:
        if not completed:  # the caller stopped: no waiting on the calls in flight
            STOPPING.set()
        if abandoned is not None:
            _abandon(pending, abandoned)
        pool.shutdown(wait=completed, cancel_futures=True)
        if not completed:
            threading.Thread(target=_stopped, args=(pool,), daemon=True).start()


def _stopped(pool: cf.ThreadPoolExecutor) -> None:
    """STOPPING cleared once the calls a stopped bounded_map left in flight have ended."""
    pool.shutdown(wait=True)
    STOPPING.clear()


def _abandon(pending: deque[list], abandoned: Callable[[Any, Any], None]) -> None:
    """The calls not begun are cancelled; each that succeeded but was not yielded goes to
    ``abandoned``."""
    for item, fut, _ in pending:
        if fut is None or fut.cancel():
            continue
        if fut.done() and fut.exception() is None:
            abandoned(item, fut.result())


def _take(pending: deque[list], ordered: bool) -> list:
    """bounded_map's next entry: the first (once its call ends), or the first that is done."""
    if ordered:
        entry = pending.popleft()
        if entry[1] is not None:
            cf.wait([entry[1]])
        return entry
    index = next((i for i, e in enumerate(pending) if e[1] is None or e[1].done()), None)
    if index is None:
        cf.wait([e[1] for e in pending], return_when=cf.FIRST_COMPLETED)
        index = next(i for i, e in enumerate(pending) if e[1].done())
    entry = pending[index]
    del pending[index]
    return entry


def _outcome(entry: list) -> Any:
    """An entry's result (known without a call, or its call's) or its call's exception."""
    fut = entry[1]
    if fut is None:
        return entry[2]
    exc = fut.exception()
    return exc if exc is not None else fut.result()


class LazyClient:
    """The client of an endpoint, made on first use (thread-safe).

    With no base URL, the embedded model (or ``serve``, a model name or directory) is served by
    the vLLM launcher for this run: started only when the first request needs it (an input
    that the rules settle, or an empty one, starts nothing) and stopped by ``close()``.
    """

    def __init__(self, endpoint: Endpoint, *, serve: str | None = None,
                 echo: Callable[[str], None] = lambda msg: None):
        self.endpoint = endpoint
        self.serve = serve
        self.echo = echo
        self.server: Any = None
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()
        self._failed: TracewheelError | None = None  # the server could not start: said once

    @classmethod
    def of(cls, endpoint: Endpoint, *, echo: Callable[[str], None] = lambda msg: None
           ) -> LazyClient:
        """A tool's client: the endpoint given, or with no base URL the embedded model, served
        for the run (and named as the model when none is)."""
        return cls(replace(endpoint, model=endpoint.model or EMBEDDED_MODEL),
                   serve=None if endpoint.base_url else EMBEDDED_MODEL, echo=echo)

    def __call__(self) -> openai.OpenAI:
        with self._lock:
            if self._failed is not None:
                raise self._failed
            if self._client is None:
                if not self.endpoint.base_url and self.serve:
                    from .vllm import VLLMServer

                    self.echo(f"no --base-url: serving {self.serve} with vLLM for this run")
                    try:
                        self.server = VLLMServer(self.serve).start()
                    except TracewheelError as err:
                        self._failed = err
                        raise
                    self.endpoint = replace(self.endpoint, base_url=self.server.base_url)
                    self.echo(f"vLLM ready at {self.server.base_url} in "
                              f"{self.server.startup_seconds:.0f} s")
                self._client = make_client(self.endpoint)
            return self._client

    def close(self) -> None:
        # Closing the client ends the requests other threads still have in flight (a tool
        # stopped by a signal must not wait out their timeouts and retries).
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> LazyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
