"""Asking a model for one JSON object, the one way every tool does it (the judge, auto rubrics):
structured output where the endpoint has it, dropped for the rest of the run where it refuses
``response_format``; a strict parse; parse retries that sample (asking again at temperature 0
would repeat the reply); HTTP retries with backoff through ``client.call_with_retries``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .client import Endpoint, MalformedReply, call_with_retries, chat, message_text

if TYPE_CHECKING:
    import openai

T = TypeVar("T")
RETRY_TEMPERATURE = 0.7
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.S)
MAX_FIELD = 4000  # characters of one part of a prompt (a record's answer, a task, an excerpt)


def clip(text: str, limit: int = MAX_FIELD) -> str:
    """``text`` cut to ``limit`` characters, head and tail kept: a 50 MB task must not become
    a 50 MB request, nor crowd out the rest of a prompt."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - limit} characters left out ...]\n{text[-half:]}"


class ReplyError(ValueError):
    """A reply that is not what was asked for. ``reason`` is a short label for a summary:
    ``empty``, ``not JSON``, ``wrong shape``."""

    def __init__(self, message: str, reason: str = "wrong shape"):
        super().__init__(message)
        self.reason = reason


def parse_json_object(text: str | None) -> dict[str, Any]:
    """A strict read: the reply is one JSON object (a ```json fence is tolerated)."""
    if not text or not text.strip():
        raise ReplyError("empty reply", "empty")
    body = text.strip()
    fence = _FENCE.fullmatch(body)
    if fence:
        body = fence.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        raise ReplyError(f"not JSON ({err.msg} at column {err.colno}): {body[:120]!r}",
                         "not JSON") from None
    if not isinstance(data, dict):
        raise ReplyError(f"not a JSON object: {body[:120]!r}")
    return data


class JsonAsker:
    """Asks ``endpoint`` for JSON objects; ``client()`` gives the OpenAI client (a LazyClient:
    the embedded server starts on the first question). Thread-safe."""

    def __init__(self, endpoint: Endpoint, client: Callable[[], openai.OpenAI], *,
                 structured: bool = True,
                 on_retry: Callable[[int, Exception, float], None] | None = None):
        self.endpoint = endpoint
        self.client = client
        self.structured = structured
        self.on_retry = on_retry

    def reply(self, messages: list[dict], *, schema: dict, name: str, temperature: float,
              max_tokens: int) -> str | None:
        """One reply's text; endpoint errors (after their retries) propagate."""
        import openai  # not at the top: a run answered from a cache never loads it

        body: dict[str, Any] = dict(model=self.endpoint.model, temperature=temperature,
                                    max_tokens=max_tokens, messages=messages)
        if self.structured:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": name, "schema": schema, "strict": True}}
        try:
            answer = call_with_retries(lambda: chat(self.client(), body),
                                       retries=self.endpoint.retries, on_retry=self.on_retry)
        except openai.BadRequestError as err:
            if self.structured and "response_format" in str(err):
                self.structured = False  # no structured output here: parse strictly instead
                return self.reply(messages, schema=schema, name=name,
                                  temperature=temperature, max_tokens=max_tokens)
            raise
        return message_text(answer)

    def ask(self, messages: list[dict], parse: Callable[[str | None], T], *, schema: dict,
            name: str, temperature: float, max_tokens: int, parse_retries: int) -> T:
        """The parsed reply; ReplyError when ``parse_retries`` more tries still do not parse, or
        when the endpoint's replies are not chat completions even after their retries."""
        problem: ReplyError | None = None
        for attempt in range(parse_retries + 1):
            hotter = temperature if attempt == 0 else max(temperature, RETRY_TEMPERATURE)
            try:
                text = self.reply(messages, schema=schema, name=name, temperature=hotter,
                                  max_tokens=max_tokens)
            except MalformedReply as err:  # retried already, like a 5xx: this ask failed
                endpoint = getattr(self.client, "endpoint", self.endpoint)
                raise ReplyError(endpoint.redact(
                    f"{endpoint.base_url}: malformed reply: {err}")) from None
            try:
                return parse(text)
            except ReplyError as err:
                problem = err
        raise ReplyError(f"no valid reply after {parse_retries + 1} tries: {problem}")
