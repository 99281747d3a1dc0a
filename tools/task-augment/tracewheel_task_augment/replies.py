"""A strict read of the generating model's reply: one JSON object ``{"tasks": [...]}`` whose
items have the method's fields with the right types, or a ReplyError that says why not.

Only a ```json fence around the object is tolerated (models add one even when told not to);
anything else around it, a truncated object, a missing field or a wrong type makes the whole
reply unparseable: it is asked again, then counted, and never passed on.
"""

from __future__ import annotations

from typing import Any

from tracewheel.ask import ReplyError, parse_json_object

from .prompts import FIELDS

_TYPES = {"string": str, "null": type(None)}


def bad_reply(reason: str, detail: str) -> ReplyError:
    """The shared ReplyError (message, then reason label), its message led by the reason."""
    return ReplyError(detail if detail.startswith(reason) else f"{reason}: {detail}", reason)


def _snippet(text: str) -> str:
    return repr(text[:120] + ("..." if len(text) > 120 else ""))


def _type_ok(value: Any, kind: str | list[str]) -> bool:
    kinds = kind if isinstance(kind, list) else [kind]
    return any(isinstance(value, _TYPES[k]) for k in kinds)


def _item(value: Any, method: str, index: int) -> dict:
    if not isinstance(value, dict):
        raise bad_reply("wrong shape", f"tasks[{index}] is not an object")
    item = {}
    for name, kind in FIELDS[method].items():
        if name not in value:
            if name == "query":
                raise bad_reply("wrong shape", f"tasks[{index}] has no query")
            item[name] = None  # an optional field left out: as if null
            continue
        if not _type_ok(value[name], kind):
            raise bad_reply("wrong shape", f"tasks[{index}].{name} is "
                                            f"{type(value[name]).__name__}, not {kind}")
        item[name] = value[name]
    return item


def parse_reply(text: str | None, method: str, finish_reason: str | None = None) -> list[dict]:
    """The items of a reply to ``method``'s prompt, each with exactly the method's fields."""
    try:
        data = parse_json_object(text)  # the one strict read of a JSON reply (tracewheel.ask)
    except ReplyError as err:
        if err.reason == "not JSON" and finish_reason == "length":
            raise bad_reply("truncated", f"cut off at --max-tokens: "
                                          f"{_snippet(text.strip())}") from None
        raise bad_reply(err.reason, str(err)) from None
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise bad_reply("wrong shape", f"no list of tasks: {_snippet(text.strip())}")
    return [_item(value, method, i) for i, value in enumerate(tasks)]
