"""Auto rubrics: from a handful of labelled examples, the rubric text that makes the judge agree
with a person.

The judge model proposes rubrics from the examples (several candidates, each shown the examples
in its own order), every candidate is scored by judging the examples with it, and the best one
is revised from the examples it still gets wrong, for a few rounds. The text that agrees best
wins. Everything that shapes a reply is in its cache key, and what is asked depends only on
earlier replies and the seed, so a re-run with the same settings asks nothing and writes the
same text.

An example is a task record with a ``label`` (``keep`` or ``drop``, and an optional
``label_reason``), or an ``--annotate`` output whose ``judge.verdict`` a person checked.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tracewheel.ask import JsonAsker, ReplyError, parse_json_object
from tracewheel.cache import Cache, cache_key
from tracewheel.errors import RecordError
from tracewheel.judge import BASE_CRITERIA, record_view

PROMPT_VERSION = 1  # part of every proposal's cache key
MAX_RULES = 8
_WORD = re.compile(r"[^\W\d_]{2,}")
_SHOWN_CHARS = 600  # of each part of an example in a prompt: several examples must fit

RUBRICS_SCHEMA = {
    "type": "object",
    "properties": {"rubrics": {"type": "array", "minItems": 1, "maxItems": MAX_RULES,
                               "items": {"type": "string", "minLength": 16,
                                         "maxLength": 300}}},
    "required": ["rubrics"],
    "additionalProperties": False,
}

_TASK = f"""\
You write rubrics for an LLM judge. The judge reads one turn of an AI agent's conversation and
decides whether it is good enough to train on: keep or drop. It already applies these base
criteria:

{BASE_CRITERIA}
"""

PROPOSE = _TASK + """
A person labelled the examples below. Write the rubrics the judge should add to the base criteria
so that its verdicts agree with the person's labels: a short list of general rules that can be
checked on any turn (what makes a turn worth keeping or dropping), not facts about one example.

Reply with one JSON object and nothing else, a rule per string, for instance:
{"rubrics": ["Drop the task when the final answer is not a number.", "Keep the task when the
answer shows its working and ends with one final result."]}"""

REVISE = _TASK + """
With the rubrics below added to the base criteria, the judge still disagrees with the person on
the examples that follow. Rewrite the rubrics so that the judge gets these right as well, keeping
the rules that work: a short list of general rules, not facts about one example.

Reply with one JSON object and nothing else, a rule per string, for instance:
{"rubrics": ["Drop the task when the final answer is not a number.", "Keep the task when the
answer shows its working and ends with one final result."]}"""


@dataclass(frozen=True)
class LearnSettings:
    candidates: int = 3    # rubrics proposed from the examples, each shown them in its own order
    rounds: int = 2        # revisions of the best rubrics from the examples they get wrong
    shots: int = 8         # examples shown in one prompt
    seed: int = 0
    temperature: float = 0.0
    max_tokens: int = 512
    parse_retries: int = 2


@dataclass
class Candidate:
    """A rubric text and how the judge did with it on the examples."""

    origin: str                      # "base criteria", "start", "proposal 2", "revision 1"
    text: str | None
    verdicts: list[dict] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    @property
    def agree(self) -> int:
        pairs = zip(self.verdicts, self.labels, strict=True)
        return sum(v["verdict"] == label for v, label in pairs)

    @property
    def errors(self) -> int:
        return sum(v["verdict"] == "error" for v in self.verdicts)

    @property
    def agreement(self) -> float:
        return self.agree / len(self.labels) if self.labels else 0.0

    def misses(self) -> list[int]:
        return [i for i, (v, label) in enumerate(zip(self.verdicts, self.labels, strict=True))
                if v["verdict"] != label]

    def confusion(self) -> dict[str, int]:
        """Keep is the positive class: what the filter lets through."""
        counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "error": 0}
        for v, label in zip(self.verdicts, self.labels, strict=True):
            if v["verdict"] == "error":
                counts["error"] += 1
            else:
                kept = v["verdict"] == "keep"
                counts[("t" if kept == (label == "keep") else "f") + ("p" if kept else "n")] += 1
        return counts

    def summary(self) -> dict[str, Any]:
        return {"origin": self.origin, "rubrics": self.text, "agree": self.agree,
                "examples": len(self.labels), "agreement": round(self.agreement, 4),
                **self.confusion()}

    def beats(self, other: Candidate) -> bool:
        return (self.agree, -self.errors) > (other.agree, -other.errors)


def example_label(record: dict) -> tuple[str, str | None]:
    """The person's label of an example and its reason; RecordError when it has none."""
    label = record.get("label")
    if label is not None:
        if label not in ("keep", "drop"):
            raise RecordError(f"label must be keep or drop, got {label!r}")
        reason = record.get("label_reason")
        return label, reason if isinstance(reason, str) else None
    judge = record.get("judge")
    verdict = judge.get("verdict") if isinstance(judge, dict) else None
    if verdict in ("keep", "drop"):
        reason = judge.get("reason")
        return verdict, reason if isinstance(reason, str) else None
    raise RecordError("no label: give `label` (keep or drop), or a `judge.verdict` of keep or "
                      "drop (trace-filter --annotate output a person checked)")


def validate_example(record: dict) -> None:
    example_label(record)
    answer = record.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise RecordError("empty answer: an example needs the answer its label judges")


def parse_rubrics(text: str | None) -> str:
    """A strict read of a proposal: ``{"rubrics": [rule, ...]}``, as a numbered list."""
    data = parse_json_object(text)
    rules = data.get("rubrics")
    if not isinstance(rules, list) or not rules or not all(isinstance(r, str) for r in rules):
        raise ReplyError(f"`rubrics` must be a list of rules, got {str(rules)[:120]!r}")
    rules = [re.sub(r"^\s*(?:\d+[.)]|[-*])\s*", "", r).strip() for r in rules]
    # A rule is a sentence: "12" or "1.1.2" is a weak model's noise, left out. A rule said
    # twice counts once.
    rules = list(dict.fromkeys(r for r in rules if len(_WORD.findall(r)) >= 3))[:MAX_RULES]
    if not rules:
        raise ReplyError(f"`rubrics` holds no rule of three words or more: "
                         f"{str(data.get('rubrics'))[:120]!r}")
    return "\n".join(f"{i}. {r}" for i, r in enumerate(rules, start=1))


def _shown(example: dict, label: str, reason: str | None, n: int,
           verdict: dict | None = None) -> str:
    head = f"# Example {n}: the person's label is {label.upper()}"
    if reason:
        head += f" ({reason})"
    if verdict is not None:
        head += f"; the judge said {verdict['verdict'].upper()}"
        if verdict.get("reason"):
            head += f" ({verdict['reason']})"
    return f"{head}\n{record_view(example, limit=_SHOWN_CHARS)}"


def _balanced(indices: Iterable[int], labels: list[str], k: int, rng: random.Random) -> list[int]:
    """Up to ``k`` examples, shuffled, alternating labels so both kinds are shown."""
    by_label: dict[str, list[int]] = {"keep": [], "drop": []}
    for i in indices:
        by_label[labels[i]].append(i)
    for group in by_label.values():
        rng.shuffle(group)
    picked: list[int] = []
    while len(picked) < k and (by_label["keep"] or by_label["drop"]):
        for label in ("drop", "keep"):
            if by_label[label] and len(picked) < k:
                picked.append(by_label[label].pop())
    return picked


class Proposer:
    """Asks for rubric texts, through the cache."""

    def __init__(self, asker: JsonAsker, settings: LearnSettings, cache: Cache | None):
        self.asker = asker
        self.settings = settings
        self.cache = cache
        self.requests = 0
        self.failed = 0

    def __call__(self, system: str, user: str) -> str | None:
        s = self.settings
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        key = cache_key("learn-rubrics", PROMPT_VERSION, messages, self.asker.endpoint.model,
                        s.temperature, s.max_tokens)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            return hit.get("rubrics")
        self.requests += 1
        try:
            text = self.asker.ask(messages, parse_rubrics, schema=RUBRICS_SCHEMA, name="rubrics",
                                  temperature=s.temperature, max_tokens=s.max_tokens,
                                  parse_retries=s.parse_retries)
        except ReplyError:
            self.failed += 1
            return None  # not cached: a later run may get a reply that parses
        if self.cache is not None:
            self.cache.put(key, {"rubrics": text})
        return text


def learn_rubrics(examples: list[dict], labels: list[tuple[str, str | None]],
                  propose: Proposer, score: Callable[[str | None], list[dict]],
                  settings: LearnSettings, *, start: str | None = None,
                  on_candidate: Callable[[Candidate], None] = lambda c: None) -> list[Candidate]:
    """Every candidate scored, in the order made: the base criteria alone (or ``start``), the
    proposals, the revisions. The best is ``best(candidates)``."""
    names = [label for label, _ in labels]

    def scored(origin: str, text: str | None) -> Candidate:
        candidate = Candidate(origin, text, score(text), names)
        on_candidate(candidate)
        return candidate

    candidates = [scored("start" if start else "base criteria", start)]
    for i in range(1, settings.candidates + 1):
        rng = random.Random(f"{settings.seed}:proposal:{i}")
        shown = _balanced(range(len(examples)), names, settings.shots, rng)
        user = "\n\n".join(_shown(examples[j], *labels[j], n) for n, j in enumerate(shown, 1))
        text = propose(PROPOSE, user)
        if text is not None:
            candidates.append(scored(f"proposal {i}", text))
    for r in range(1, settings.rounds + 1):
        current = best(candidates)
        misses = current.misses()
        if current.text is None or not misses:
            break
        rng = random.Random(f"{settings.seed}:revision:{r}")
        shown = _balanced(misses, names, settings.shots, rng)
        user = f"# Current rubrics\n{current.text}\n\n" + "\n\n".join(
            _shown(examples[j], *labels[j], n, current.verdicts[j])
            for n, j in enumerate(shown, 1))
        text = propose(REVISE, user)
        if text is not None:
            candidates.append(scored(f"revision {r}", text))
    return candidates


def best(candidates: list[Candidate]) -> Candidate:
    """The candidate with a rubric text that agrees best (fewer errors on a tie, then the
    earliest: a simpler text is not beaten by an equal one). The base criteria alone, which
    have no text, win only when no text was proposed."""
    texts = [c for c in candidates if c.text is not None] or candidates
    chosen = texts[0]
    for candidate in texts[1:]:
        if candidate.beats(chosen):
            chosen = candidate
    return chosen
