r"""Final answers and references: extraction, normalisation and a three-way comparison.

Math answers come written many ways: ``7,006,652`` and ``7006652``, ``\frac{5}{12}`` and
``5/12``, ``210 \text{ minutes}`` and ``210``, ``0.30`` and ``.3``, ``x = 5`` and ``5``. Numbers
are compared as exact fractions after those spellings are undone; anything else is compared as
normalised text. The same comparison serves rollout's ``boxed`` reward and trace-filter's
``--check-reference``, so a task the filter keeps scores 1.0 with the reward.

``check_answer`` has three outcomes: the answer *agrees* with the reference, *contradicts* it,
or the comparison is *undecided* (no final value to read, two texts that may mean the same):
it never guesses.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$", re.I)
# "x = 5", "A = 28.27": the value after a variable's name.
_ASSIGNED = re.compile(r"^[a-z]\w{0,2}\s*(?:=|≈|\\approx)\s*(.+)$", re.I | re.S)
# A number followed by a unit: "600 minutes", "40 cm²", "12 °C".
_UNIT = re.compile(r"^([+-]?[\d.,/]+)\s*[a-zµ°²³][a-zµ°²³ .]*$", re.I)
# Numbers as written in prose: 1,234.5, -3, 5/12, 20%. Not inside words ("x2") or decimals.
_NUMBER_IN_TEXT = re.compile(
    r"(?<![\w.,/])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?![\d/]|\.\d|,\d{3})(%?)")
_SENTENCE_END = re.compile(r"\n+|(?<=[.!?。！？])\s+")
SHORT_ANSWER = 40  # characters: an answer this short, without numbers, is its own final value

Outcome = Literal["agree", "contradict", "undecided"]


def boxed_values(text: str) -> list[str]:
    r"""The contents of every ``\boxed{...}`` in ``text``, nested braces included."""
    values = []
    for match in re.finditer(r"\\boxed\s*\{", text or ""):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    values.append(text[start:i])
                    break
    return values


def normalize_answer(value: str) -> Fraction | str:
    """A number as an exact Fraction where the text is one, else the text, normalised."""
    text = _TEXT.sub(r" \1", value).replace("−", "-")
    text = _FRAC.sub(r"(\1)/(\2)", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\!", "")
    text = re.sub(r"\\[,;: ]|~|\\?\$|\\?%", "", text).strip().rstrip(".").strip()
    assigned = _ASSIGNED.match(text)
    if assigned:
        text = assigned[1].strip()
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    number = _as_number(text)
    if number is None:
        unit = _UNIT.match(text)
        if unit:
            number = _as_number(unit[1].replace(",", "") if _THOUSANDS.match(unit[1])
                                else unit[1])
    if number is not None:
        return number
    return re.sub(r"\s+", " ", text).casefold()


def _as_number(text: str) -> Fraction | None:
    compact = text.replace(" ", "")
    if _NUMBER.match(compact):
        return Fraction(compact)
    parts = re.fullmatch(r"\(?([^()/]+)\)?/\(?([^()/]+)\)?", compact)
    if parts:
        num, den = _as_number(parts[1]), _as_number(parts[2])
        if num is not None and den:
            return num / den
    return None


def split_reference(reference: str) -> list[str]:
    """A reference of several values (``2, 3``) as its parts; ``7,006,652`` is one number."""
    text = reference.strip()
    if _THOUSANDS.match(text) or "," not in text:
        return [text]
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class Check:
    """The outcome of comparing an answer with its reference, and why."""

    outcome: Outcome
    kind: str        # a short, countable name of the reason: "different value", "no answer"
    reason: str      # the reason in full, with the values
    predicted: list[str]
    source: str | None = None  # where the values came from: boxed, final number, short answer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def final_values(answer: str) -> tuple[list[str], str | None]:
    r"""The answer's final value(s) and where they were read: every ``\boxed{}``; else the
    numbers of its last sentence that has one; else the whole answer when it is short."""
    boxed = boxed_values(answer)
    if boxed:
        return boxed, "boxed"
    for sentence in reversed(_SENTENCE_END.split(answer.strip())):
        numbers = [m[0] for m in _NUMBER_IN_TEXT.finditer(sentence)]
        if numbers:
            return numbers, "final number"
    text = answer.strip()
    if text and len(text) <= SHORT_ANSWER and "\n" not in text:
        return [text.rstrip(".!")], "short answer"
    return [], None


def _show(value: Fraction | str) -> str:
    """A normalised value as a person writes it: 42, 28.27, 5/12, 'paris'."""
    if not isinstance(value, Fraction):
        return repr(value)
    if value.denominator == 1:
        return str(value.numerator)
    rest = value.denominator
    for p in (2, 5):
        while rest % p == 0:
            rest //= p
    if rest == 1:  # a finite decimal
        return format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return f"{value.numerator}/{value.denominator}"


def _decimals(text: str) -> int:
    match = re.search(r"\.(\d+)\s*$", text.strip().rstrip("."))
    return len(match[1]) if match else 0


def _compare_one(got: Fraction | str, got_text: str, want: Fraction | str,
                 want_text: str) -> tuple[Outcome, str, str]:
    if got == want:
        return "agree", "equal", f"{_show(got)} equals the reference"
    if isinstance(got, Fraction) and isinstance(want, Fraction):
        # A decimal may be rounded (an integer or a fraction is exact): two values that agree
        # at the precision of the coarser decimal are not decided either way.
        places = [n for n in (_decimals(got_text), _decimals(want_text)) if n]
        if places and round(got, min(places)) == round(want, min(places)):
            return "undecided", "equal only rounded", (
                f"{got_text.strip()} and the reference {want_text.strip()} agree only when "
                f"rounded to {min(places)} decimals")
        return "contradict", "different value", f"{_show(got)}, the reference is {_show(want)}"
    if isinstance(got, Fraction) or isinstance(want, Fraction):
        return "undecided", "number and text", (
            f"cannot compare {_show(got)} with the reference {_show(want)}")
    simple = re.compile(r"[^\W\d_]+(?: [^\W\d_]+){0,2}")
    if simple.fullmatch(got) and simple.fullmatch(want) \
            and f" {got} " not in f" {want} " and f" {want} " not in f" {got} ":
        return "contradict", "different value", f"{_show(got)}, the reference is {_show(want)}"
    return "undecided", "texts differ", (
        f"the text {_show(got)} differs from the reference {_show(want)}")


def compare_values(predicted: list[str], reference: str,
                   source: str | None = "boxed") -> tuple[Outcome, str, str]:
    """The answer's final values against a reference: one value (the last one given counts),
    or as many as the reference lists, in any order. ``(outcome, kind, reason)``."""
    if not predicted:
        return "undecided", "no final value", "no final value in the answer"
    wanted_text = split_reference(reference)
    if len(wanted_text) == 1:
        return _compare_one(normalize_answer(predicted[-1]), predicted[-1],
                            normalize_answer(wanted_text[0]), wanted_text[0])
    values = [part for value in predicted for part in split_reference(value)]
    if source == "final number":  # a sentence's numbers include the working: the last k count
        values = values[-len(wanted_text):]
    got = [normalize_answer(v) for v in values]
    want = [normalize_answer(v) for v in wanted_text]
    key = lambda v: (isinstance(v, str), str(v))  # noqa: E731 - Fractions and text sort apart
    shown = f"{', '.join(map(_show, got))}, the reference is {', '.join(map(_show, want))}"
    if Counter(map(key, got)) == Counter(map(key, want)):
        return "agree", "equal", f"the values {', '.join(map(_show, got))} are the reference's"
    if all(isinstance(v, Fraction) for v in got + want) and source != "final number":
        return "contradict", "different value", shown
    return "undecided", "values differ", shown


def check_answer(answer: str | None, reference: str | int | float | None) -> Check:
    """Compare an answer's final value with a known-good reference, three ways."""
    if reference is None or not str(reference).strip():
        return Check("undecided", "no reference", "the task has no reference", [])
    if answer is None or not answer.strip():
        return Check("contradict", "no answer", "no answer to compare with the reference", [])
    predicted, source = final_values(answer)
    if not predicted:
        return Check("undecided", "no final value", "no \\boxed{}, no number, not a short answer",
                     [])
    outcome, kind, reason = compare_values(predicted, str(reference), source)
    if source == "final number" and outcome == "contradict":
        # Without a box the last number is a reading, not a statement: it decides only when
        # the reference's value is nowhere else in that sentence.
        want = normalize_answer(str(reference))
        earlier = [normalize_answer(v) for v in predicted[:-1] if not v.endswith("%")]
        if want in earlier:
            return Check("undecided", "not the final number", (
                f"the reference's value is in the answer's last sentence, but its final "
                f"number is {predicted[-1]}"), predicted, source)
    return Check(outcome, kind, reason, predicted, source)


def answers_match(predicted: list[str], reference: str) -> bool:
    """The boxed values of an answer against a reference: one value, or as many as it lists."""
    return compare_values(predicted, reference)[0] == "agree"


def boxed_reward(answer: str | None, reference: str | None) -> tuple[float | None, dict]:
    r"""1.0 when the answer's ``\boxed{}`` values agree with the reference, else 0.0; None
    (with the reason in the info) when there is no reference to compare with."""
    predicted = boxed_values(answer or "")
    info: dict = {"method": "boxed", "predicted": predicted, "reference": reference}
    if reference is None or not str(reference).strip():
        return None, {**info, "reason": "the task has no reference"}
    match = answers_match(predicted, str(reference))
    if not predicted:
        info["reason"] = "no \\boxed{} in the answer"
    return (1.0 if match else 0.0), {**info, "match": match}
