"""Cheap checks of a generated task that parsed but is not fit to train on ("off-spec"): empty,
an echo of the prompt, the wrong language, far off the examples' length, a paraphrase that
changed a number (and so maybe its answer), a question that points at "the excerpt"."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from tracewheel.dedup import normalize_text

from .prompts import MARKERS, PLACEHOLDERS

_PLACEHOLDERS = {normalize_text(p) for p in PLACEHOLDERS}
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_POINTS_AT_EXCERPT = re.compile(r"\b(?:the|this|that|above|given)\s+(?:excerpt|passage)\b", re.I)


def script_of(text: str) -> str | None:
    """The writing system most of ``text``'s letters use: ``ja`` (any kana), ``ko`` (hangul),
    ``zh`` (Han without kana), else the Unicode script name (``LATIN``, ``CYRILLIC``, ...).
    None for text without letters. Enough to tell Japanese from English, not French from it."""
    counts: Counter = Counter()
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            counts[name.split(" ", 1)[0] if name else "OTHER"] += 1
    if not counts:
        return None
    if counts["HIRAGANA"] or counts["KATAKANA"]:
        return "ja"
    if counts["HANGUL"]:
        return "ko"
    top = counts.most_common(1)[0][0]
    return "zh" if top == "CJK" else top


def empty_or_echo(query: str) -> str | None:
    """Nothing there, or the prompt's own words where a task should be."""
    text = normalize_text(query)
    if not text:
        return "empty"
    if text in _PLACEHOLDERS or any(m in query.lower() for m in MARKERS):
        return "prompt echo"
    return None


def wrong_language(query: str, script: str | None) -> str | None:
    if script is None:
        return None
    mine = script_of(query)
    return "wrong language" if mine is not None and mine != script else None


def off_length(query: str, shortest: int, longest: int) -> str | None:
    """Generous bounds: a task a third as long as the shortest example, or three times (plus
    100 characters) as long as the longest, is not "about as long"."""
    size = len(query.strip())
    if size < shortest / 3:
        return "too short"
    if size > 3 * longest + 100:
        return "too long"
    return None


def numbers(text: str) -> set[str]:
    """Numbers written in digits (thousands separators dropped)."""
    return {n.replace(",", "").rstrip(".") for n in _NUMBER.findall(text)}


def changed_numbers(query: str, original: str) -> str | None:
    """A rewording must keep every number of the request, and add none: else its reference
    answer may no longer hold."""
    return "numbers changed" if numbers(query) != numbers(original) else None


def points_at_excerpt(query: str) -> str | None:
    """A question that says "the excerpt" is not self-contained for the assistant."""
    return "not self-contained" if _POINTS_AT_EXCERPT.search(query) else None


def first_problem(*problems: str | None) -> str | None:
    return next((p for p in problems if p), None)
