r"""Final answers in ``\boxed{...}``: extraction, normalisation and comparison with a reference.

Math answers come written many ways: ``7,006,652`` and ``7006652``, ``\frac{5}{12}`` and
``5/12``, ``210 \text{ minutes}`` and ``210``, ``0.30`` and ``.3``. Numbers are compared as
exact fractions after those spellings are undone; anything else is compared as normalised text.
"""

from __future__ import annotations

import re
from fractions import Fraction

_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{[^{}]*\}")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$", re.I)


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


def normalize(value: str) -> Fraction | str:
    """A number as an exact Fraction where the text is one, else the text, normalised."""
    text = _TEXT.sub("", value)
    text = _FRAC.sub(r"(\1)/(\2)", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\!", "")
    text = re.sub(r"\\[,;: ]|~|\\?\$|\\?%", "", text).strip().rstrip(".").strip()
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    number = _as_number(text)
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


def answers_match(predicted: list[str], reference: str) -> bool:
    """The boxed values of an answer against a reference: one value, or as many as it lists."""
    if not predicted:
        return False
    wanted = [normalize(part) for part in split_reference(reference)]
    got = [normalize(value) for value in predicted]
    if len(wanted) == 1:
        return got[-1] == wanted[0] or (len(got) > 1 and got == wanted)
    return got == wanted or (len(got) == 1 and got[0] == normalize(reference))


def boxed_reward(answer: str | None, reference: str | None) -> tuple[float | None, dict]:
    r"""1.0 when the answer's ``\boxed{}`` values match the reference, else 0.0; None (with
    the reason in the info) when there is no reference to compare with."""
    predicted = boxed_values(answer or "")
    info: dict = {"method": "boxed", "predicted": predicted, "reference": reference}
    if reference is None or not str(reference).strip():
        return None, {**info, "reason": "the task has no reference"}
    match = answers_match(predicted, str(reference))
    if not predicted:
        info["reason"] = "no \\boxed{} in the answer"
    return (1.0 if match else 0.0), {**info, "match": match}
