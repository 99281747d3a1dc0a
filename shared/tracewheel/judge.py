"""The LLM judge (trace-filter's filter, rollout's judge reward): what it is shown, what it is
asked, and how strictly its verdict is read."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .ask import MAX_FIELD, JsonAsker, ReplyError, clip, parse_json_object
from .cli import PARSE_RETRIES
from .client import Endpoint
from .ids import stable_id
from .messages import content_text

if TYPE_CHECKING:
    import openai

PROMPT_VERSION = 2  # part of every cache key: a new prompt makes old verdicts stale

BASE_CRITERIA = """\
Drop the task when any of these holds:
1. There is no answer, or the answer is empty.
2. The answer is a non-answer: it refuses without reason, only asks back, or says nothing useful.
3. The answer is off-topic: it does not address the request.
4. The answer contradicts itself, or contradicts the results of the tools it called.
5. The answer is unsafe or harmful.
6. The answer is in a different language from the request.
7. The user's feedback after the answer shows it was wrong or unhelpful. Feedback is strong
   evidence, not proof: users can be wrong too, so check it against the answer and the tools.
8. A known-good reference answer is shown and the answer's final result disagrees with it. The
   reference is checked and correct, unlike the user's feedback.
Keep the task when the answer is a good, correct response to the request."""

SYSTEM = """\
You are a strict reviewer of an AI agent's conversations. Decide whether one agent turn is good
enough to train on.

# Base criteria
{base}
{custom}
# Output
Reply with one JSON object and nothing else:
{{"verdict": "keep" or "drop", "reason": "<one sentence>"}}"""

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["keep", "drop"]},
                   "reason": {"type": "string"}},
    "required": ["verdict", "reason"],
    "additionalProperties": False,
}



def rubrics_text(value: str | None) -> str | None:
    """--rubrics is a file when such a file exists, else the rubric text itself; a lone word
    that names a file (``rubric.txt``, ``conf/r.md``) but finds none is a typo, not a rubric."""
    if value is None:
        return None
    path = Path(value)
    if len(value) < 4096 and "\n" not in value and path.is_file():
        return path.read_text(encoding="utf-8")
    if not any(c.isspace() for c in value) and ("/" in value or path.suffix):
        raise click.BadParameter(f"no such file: {value}", param_hint="--rubrics")
    return value


class VerdictError(ReplyError):
    """A judge reply that is not a verdict."""


def system_prompt(rubrics: str | None) -> str:
    custom = f"\n# Custom rubrics (from the user; they win over the base criteria)\n" \
             f"{rubrics.strip()}\n" if rubrics and rubrics.strip() else ""
    return SYSTEM.format(base=BASE_CRITERIA, custom=custom)


def _tool_summary(trajectory: list[dict]) -> list[str]:
    lines = []
    for call in trajectory or []:
        if call.get("type") == "tool" and not call.get("framework"):
            args = json.dumps(call.get("arguments"), ensure_ascii=False)
            result = content_text(call.get("result"))
            lines.append(f"- {call.get('name')}({args[:500]}) -> {result[:500]}"
                         f"{' [failed]' if call.get('status') == 'error' else ''}")
        elif call.get("type") == "llm" and call.get("status") == "error":
            lines.append(f"- LLM call failed: {call.get('error')}")
    return lines


def record_view(record: dict, limit: int = MAX_FIELD) -> str:
    """The record as the judge sees it: context, request, tools, answer, reference, feedback.
    Each part is clipped to ``limit`` characters (head and tail kept)."""
    messages = record.get("messages") or []
    context = [m for m in messages[:-1] if m.get("role") != "system"]
    parts = []
    if context:
        parts.append("## Earlier conversation\n" + clip("\n".join(
            f"[{m.get('role')}] {content_text(m.get('content'))}" for m in context), limit))
    parts.append("## Request\n" + clip(content_text(record.get("query")), limit))
    tools = _tool_summary(record.get("trajectory") or [])
    if tools:
        parts.append("## Tool calls the agent made\n" + clip("\n".join(tools), limit))
    answer = record.get("answer")
    parts.append("## Agent's answer\n" + (clip(answer, limit) if answer else "(no answer)"))
    reference = record.get("reference")
    if reference is not None and str(reference).strip():
        parts.append("## Known-good reference answer\n" + clip(str(reference), limit))
    feedback = record.get("feedback") or []
    if feedback:
        parts.append("## What the user said next\n" + clip("\n".join(
            content_text(m.get("content")) for m in feedback), limit))
    return "\n\n".join(parts)


def parse_verdict(text: str | None) -> dict:
    """A strict read: one JSON object (a ```json fence is tolerated) with verdict keep|drop."""
    try:
        data = parse_json_object(text)
    except ReplyError as err:
        raise VerdictError(str(err)) from None
    verdict = data.get("verdict")
    if verdict not in ("keep", "drop"):
        raise VerdictError(f"verdict must be keep or drop, got {verdict!r}")
    reason = data.get("reason")
    return {"verdict": verdict, "reason": reason if isinstance(reason, str) else ""}


@dataclass(kw_only=True)
class JudgeSettings:
    """How the judge is asked. Its defaults are the judge's, wherever it judges: trace-filter's
    options and rollout's --reward judge both read them from here."""

    endpoint: Endpoint
    rubrics: str | None
    temperature: float = 0.0
    max_tokens: int = 512
    parse_retries: int = PARSE_RETRIES
    structured: bool = True

    @property
    def rubric_hash(self) -> str:
        return stable_id(self.rubrics or "")

    def key(self, record: dict) -> str:
        """Cache key: what the judge sees, the prompt, the model and every parameter."""
        return stable_id(PROMPT_VERSION, record_view(record), self.rubrics or "",
                         self.endpoint.model, self.temperature, self.max_tokens)


class Judge:
    """``client()`` gives the OpenAI client (a LazyClient: the embedded server starts on the
    first question, not before)."""

    def __init__(self, settings: JudgeSettings, client: Callable[[], openai.OpenAI],
                 on_retry=None):
        self.settings = settings
        self.system = system_prompt(settings.rubrics)
        self.asker = JsonAsker(settings.endpoint, client, structured=settings.structured,
                               on_retry=on_retry)

    def __call__(self, record: dict) -> dict:
        """A verdict ``{"verdict", "reason"}``; VerdictError after the parse retries; endpoint
        errors (after their own retries) propagate."""
        s = self.settings
        messages = [{"role": "system", "content": self.system},
                    {"role": "user", "content": record_view(record)}]
        try:
            return self.asker.ask(messages, parse_verdict, schema=VERDICT_SCHEMA, name="verdict",
                                  temperature=s.temperature, max_tokens=s.max_tokens,
                                  parse_retries=s.parse_retries)
        except VerdictError:
            raise
        except ReplyError as err:
            raise VerdictError(str(err)) from None
