"""Chat templates on this side of the server: loading a model's tokenizer, rendering messages
the way the project's vLLM renders them, and checking that a template renders a conversation
append-only (each turn's rendering a prefix of the next one's), which token-level merging and
the recorder's continued prompts rely on.

transformers is imported only when a tokenizer is loaded (it takes seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TracewheelError
from .models import resolve_model

# The ChatML-with-tools template the project's vLLM launcher serves every model with.
CHAT_TEMPLATE = Path(__file__).resolve().parent / "templates" / "chatml_tools.jinja"

MODEL_TEMPLATE = "model"  # --chat-template model: the tokenizer's own template


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a model directory, or of ``smollm2-135m`` (the embedded model)."""
    path = resolve_model(name)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise TracewheelError(f"{name}: cannot load its tokenizer ({err})") from None


def template_text(value: str | None) -> str | None:
    """--chat-template: a Jinja file, ``model`` (None: the tokenizer's own), or the default,
    the ChatML-with-tools template the project's vLLM launcher serves every model with."""
    if value == MODEL_TEMPLATE:
        return None
    path = Path(value) if value else CHAT_TEMPLATE
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise TracewheelError(f"{path}: cannot read the chat template ({err.strerror})") from None


def server_tools(tools: list | None) -> list | None:
    """Tools as vLLM hands them to the template: each function's name, description and
    parameters, in that order (it reads them into its own models first)."""
    if not tools:
        return None
    out = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict):
            out.append(tool)
            continue
        out.append({"type": tool.get("type", "function"),
                    "function": {k: fn[k] for k in ("name", "description", "parameters")
                                 if fn.get(k) is not None}})
    return out


def render(tokenizer: Any, messages: list, tools: list | None, template: str | None,
           generation: bool) -> str:
    """The conversation as the template writes it (with the assistant's opening when
    ``generation``)."""
    return tokenizer.apply_chat_template(messages, tools=tools or None, chat_template=template,
                                         tokenize=False, add_generation_prompt=generation)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Rendered text to token ids, as vLLM tokenizes a rendered chat (no added BOS)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class Break:
    """Where a template's rendering of a conversation is not append-only."""

    turn: int          # the message whose arrival changed what came before it
    role: str
    at: int            # the first character that changed
    before: str        # a few characters of the earlier rendering from there on
    after: str         # the same place in the later rendering

    def __str__(self) -> str:
        return (f"message {self.turn} ({self.role}) changes the rendering of the turns before "
                f"it at character {self.at}: {self.before!r} became {self.after!r}")


def append_only_breaks(tokenizer: Any, messages: list, tools: list | None,
                       template: str | None) -> list[Break]:
    """Every place where rendering messages 1..k is not a prefix of rendering 1..k+1 (and,
    before an assistant turn, where the generation prompt is not a prefix of that turn)."""
    breaks: list[Break] = []
    previous = None
    for k in range(1, len(messages) + 1):
        role = str(messages[k - 1].get("role")) if isinstance(messages[k - 1], dict) else "?"
        current = render(tokenizer, messages[:k], tools, template, False)
        earlier = [previous] if previous is not None else []
        if role == "assistant":
            earlier.append(render(tokenizer, messages[:k - 1], tools, template, True))
        for text in earlier:
            if not current.startswith(text):
                at = next((i for i, (a, b) in enumerate(zip(text, current, strict=False))
                           if a != b), min(len(text), len(current)))
                breaks.append(Break(k - 1, role, at, text[at:at + 40], current[at:at + 40]))
                break
        previous = current
    return breaks
