"""What the generating model is told, per method, and the JSON it must answer with.

The prompts are part of the product: PROMPT_VERSION is in every cache key and every record's
``augment`` field, so a change here makes old replies stale instead of silently mixing them in.
"""

from __future__ import annotations

from typing import Any

from tracewheel.ask import clip

PROMPT_VERSION = 1

# Fields each method's reply items carry: name -> JSON schema type. ``query`` is required and a
# string in all of them; the others are typed as given (docs' answer may be null).
FIELDS: dict[str, dict[str, Any]] = {
    "expand": {"query": "string"},
    "paraphrase": {"query": "string"},
    "docs": {"query": "string", "answer": ["string", "null"], "evidence": ["string", "null"]},
}

# Markers of the prompt's own structure: a task that contains one copied the prompt.
MARKERS = ("<task>", "</task>", "<excerpt>", "</excerpt>", "<request>", "</request>",
           "<instructions>", "</instructions>")
# What a model echoes when it fills in the reply format instead of writing a task.
PLACEHOLDERS = ("string", "query", "a new task", "new task", "task", "question", "null",
                "a question", "the reworded request")

_CLIP = 1500  # characters of an agent's system prompt shown as context

_RULES_REPLY = """Reply with one JSON object and nothing else, in this form:
{fmt}"""

EXPAND_SYSTEM = """\
You write new tasks for training an AI assistant. You are shown example tasks that real users \
gave the assistant. Write {want} new {tasks} that such users could also give it. Each new task \
must be:
- on the same topics as the examples, and of the same kind;
- in the same language, style and tone as the examples, and about as long \
({lo} to {hi} characters);
- complete and self-contained: everything needed to do it is in the task itself;
- really new: not a copy of an example, and not an example with a few words, names or numbers \
changed;
- different from the other new tasks.
Write each task as the user would write it: no answer, no numbering, no comment.

""" + _RULES_REPLY

DOCS_SYSTEM = """\
You write questions for training an AI assistant, grounded in a document. You are shown one \
excerpt of the document. Write {want} {questions} that a user of the document could ask the \
assistant and that the excerpt answers. Each question must be:
- complete and self-contained: never say "the excerpt", "the passage" or "the text above"; \
name what you ask about;
- in the language of the excerpt;
- about a different fact, step or rule than the other questions.{style}
For each question also give:
- "answer": the answer as the excerpt states it, in a few words or one sentence; null when the \
excerpt does not state it plainly;
- "evidence": the sentence of the excerpt that states the answer, copied exactly; null when \
there is none.

""" + _RULES_REPLY

DOCS_STYLE = """
- written the way the example user tasks are written (their style, not their topics)."""

PARAPHRASE_SYSTEM = """\
You reword requests that users gave an AI assistant. Rewrite the request {want} {times}. Each \
version must:
- ask for exactly the same thing, with the same facts, names, numbers and conditions, so that \
its correct answer stays the same;
- be worded differently: change the sentence structure and the words, not only a word or two;
- keep the language, tone and format of the request;
- differ from the other versions.
Write each version as the user would write it: no answer, no numbering, no comment.

""" + _RULES_REPLY


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def reply_format(method: str) -> str:
    """The reply's shape as the prompt shows it (types, not values: values get copied)."""
    fields = ", ".join(f'"{name}": {" or ".join(kind) if isinstance(kind, list) else kind}'
                       for name, kind in FIELDS[method].items())
    return '{"tasks": [{' + fields + '}]}'


def reply_schema(method: str, want: int) -> dict[str, Any]:
    """The JSON schema of a reply, for endpoints with structured output."""
    item = {"type": "object",
            "properties": {name: {"type": kind} for name, kind in FIELDS[method].items()},
            "required": list(FIELDS[method]), "additionalProperties": False}
    return {"type": "object",
            "properties": {"tasks": {"type": "array", "items": item,
                                     "minItems": 1, "maxItems": want}},
            "required": ["tasks"], "additionalProperties": False}


def _tasks_block(title: str, texts: list[str]) -> str:
    return title + "\n" + "\n".join(f"<task>\n{clip(t.strip())}\n</task>" for t in texts)


def _avoid_block(title: str, avoid: list[str]) -> str:
    return f"\n\n{_tasks_block(title, avoid)}" if avoid else ""


def _context(system: str | None) -> str:
    if not system or not system.strip():
        return ""
    text = system.strip()
    if len(text) > _CLIP:
        text = text[:_CLIP] + " [...]"
    return ("The assistant works under these instructions (context only: do not copy them):\n"
            f"<instructions>\n{text}\n</instructions>\n\n")


def expand_messages(shots: list[str], want: int, *, system: str | None = None,
                    avoid: list[str] = ()) -> list[dict]:
    """Ask for ``want`` new tasks like ``shots``; ``avoid``: tasks already written from them."""
    lengths = [len(s.strip()) for s in shots]
    sys_text = EXPAND_SYSTEM.format(want=want, tasks=_plural(want, "task", "tasks"),
                                    lo=min(lengths), hi=max(lengths),
                                    fmt=reply_format("expand"))
    user = (_context(system) + _tasks_block("Example tasks:", shots)
            + _avoid_block("Tasks already written, which the new ones must not repeat:",
                           list(avoid))
            + f"\n\nWrite {want} new {_plural(want, 'task', 'tasks')} now.")
    return [{"role": "system", "content": sys_text}, {"role": "user", "content": user}]


def docs_messages(excerpt: str, want: int, *, document: str, section: str | None,
                  style: list[str] = (), avoid: list[str] = ()) -> list[dict]:
    """Ask for ``want`` questions that ``excerpt`` answers."""
    sys_text = DOCS_SYSTEM.format(want=want, questions=_plural(want, "question", "questions"),
                                  style=DOCS_STYLE if style else "", fmt=reply_format("docs"))
    head = f"Document: {document}\n" + (f"Section: {section}\n" if section else "")
    user = (head + f"<excerpt>\n{clip(excerpt.strip())}\n</excerpt>"
            + (f"\n\n{_tasks_block('Example user tasks (for the style only):', list(style))}"
               if style else "")
            + _avoid_block("Questions already written from this excerpt, which the new ones "
                           "must not repeat:", list(avoid))
            + f"\n\nWrite {want} {_plural(want, 'question', 'questions')} now.")
    return [{"role": "system", "content": sys_text}, {"role": "user", "content": user}]


def paraphrase_messages(request: str, want: int, *, avoid: list[str] = ()) -> list[dict]:
    """Ask for ``want`` rewordings of ``request``."""
    sys_text = PARAPHRASE_SYSTEM.format(want=want, times=_plural(want, "time", "times"),
                                        fmt=reply_format("paraphrase"))
    user = (f"<request>\n{clip(request.strip())}\n</request>"
            + _avoid_block("Versions already written, which the new ones must not repeat:",
                           list(avoid))
            + f"\n\nWrite {want} reworded {_plural(want, 'version', 'versions')} now.")
    return [{"role": "system", "content": sys_text}, {"role": "user", "content": user}]
