"""Asking a model for one JSON object, the one way every tool does it (the judge, auto rubrics):
structured output where the endpoint has it, dropped for the rest of the run where it refuses
``response_format``; a strict parse; parse retries that sample (asking again at temperature 0
would repeat the reply); HTTP retries with backoff through ``client.call_with_retries``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class Reply:
    """One chat reply: its text, why it ended (``length``: cut), and the requests it took
    (HTTP retries and re-sends without a refused option included)."""

    text: str | None
    finish_reason: str | None = None
    requests: int = 1
    retries: int = 0


class JsonAsker:
    """Asks ``endpoint`` for JSON objects; ``client()`` gives the OpenAI client (a LazyClient:
    the embedded server starts on the first question). Optional parts of a request an endpoint
    may refuse (structured output, a sampling seed) are dropped for the rest of the run after
    the first refusal. Thread-safe."""

    def __init__(self, endpoint: Endpoint, client: Callable[[], openai.OpenAI], *,
                 structured: bool = True, seeds: bool = True,
                 on_retry: Callable[[int, Exception, float], None] | None = None):
        self.endpoint = endpoint
        self.client = client
        self.structured = structured
        self.send_seed = seeds
        self.on_retry = on_retry

    def reply(self, messages: list[dict], *, schema: dict, name: str, temperature: float,
              max_tokens: int, seed: int | None = None) -> Reply:
        """One reply; endpoint errors (after their retries) propagate."""
        import openai  # not at the top: a run answered from a cache never loads it

        body: dict[str, Any] = dict(model=self.endpoint.model, temperature=temperature,
                                    max_tokens=max_tokens, messages=messages)
        if seed is not None and self.send_seed:
            body["seed"] = seed
        if self.structured:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": name, "schema": schema, "strict": True}}
        retries = 0

        def retried(n: int, err: Exception, delay: float) -> None:
            nonlocal retries
            retries += 1
            if self.on_retry is not None:
                self.on_retry(n, err, delay)

        try:
            answer = call_with_retries(lambda: chat(self.client(), body),
                                       retries=self.endpoint.retries, on_retry=retried)
        except openai.BadRequestError as err:
            refused = str(err)
            if "response_format" in body and "response_format" in refused:
                self.structured = False  # no structured output here: parse strictly instead
            elif "seed" in body and "seed" in refused:
                self.send_seed = False
            else:
                raise
            again = self.reply(messages, schema=schema, name=name, temperature=temperature,
                               max_tokens=max_tokens, seed=seed)
            again.requests += 1 + retries
            again.retries += retries
            return again
        choices = answer.get("choices") or [{}]
        return Reply(message_text(answer), choices[0].get("finish_reason"), 1 + retries,
                     retries)

    def ask(self, messages: list[dict], parse: Callable[[str | None], T], *, schema: dict,
            name: str, temperature: float, max_tokens: int, parse_retries: int) -> T:
        """The parsed reply text (see ``ask_reply``); a ReplyError too when the endpoint's
        replies are not chat completions even after their retries (this ask failed, not the
        run)."""
        try:
            return self.ask_reply(messages, lambda reply: parse(reply.text), schema=schema,
                                  name=name, temperature=temperature, max_tokens=max_tokens,
                                  parse_retries=parse_retries)
        except MalformedReply as err:  # retried already, like a 5xx
            endpoint = getattr(self.client, "endpoint", self.endpoint)
            raise ReplyError(endpoint.redact(
                f"{endpoint.base_url}: malformed reply: {err}")) from None

    def ask_reply(self, messages: list[dict], parse: Callable[[Reply], T], *, schema: dict,
                  name: str, temperature: float, max_tokens: int, parse_retries: int,
                  seed: Callable[[int], int] | None = None,
                  count: Callable[[Reply], None] | None = None) -> T:
        """The parsed reply: asked again, hotter, up to ``parse_retries`` more times while it
        does not parse (``seed(try)`` seeds each try; ``count(reply)`` sees every reply). A
        ReplyError, with the last one's reason, when none parses; endpoint errors (MalformedReply
        included) propagate after their retries."""
        problem: ReplyError | None = None
        for attempt in range(parse_retries + 1):
            hotter = temperature if attempt == 0 else max(temperature, RETRY_TEMPERATURE)
            reply = self.reply(messages, schema=schema, name=name, temperature=hotter,
                               max_tokens=max_tokens,
                               seed=seed(attempt) if seed is not None else None)
            if count is not None:
                count(reply)
            try:
                return parse(reply)
            except ReplyError as err:
                problem = err
        assert problem is not None
        raise ReplyError(f"no valid reply after {parse_retries + 1} tries: {problem}",
                         problem.reason)
