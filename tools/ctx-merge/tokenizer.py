"""Tokenizers, loaded once and only when needed (transformers takes seconds to import)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flywheel.errors import FlywheelError
from flywheel.models import resolve_model
from flywheel.vllm import CHAT_TEMPLATE

MODEL_TEMPLATE = "model"  # --chat-template model: the tokenizer's own template


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a model directory, or of ``smollm2-135m`` (the embedded model)."""
    path = resolve_model(name)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise FlywheelError(f"{name}: cannot load its tokenizer ({err})") from None


def chat_template_text(value: str | None) -> str | None:
    """--chat-template: a Jinja file, ``model`` (None: the tokenizer's own), or the default,
    the ChatML-with-tools template the project's vLLM launcher serves every model with."""
    if value == MODEL_TEMPLATE:
        return None
    path = Path(value) if value else CHAT_TEMPLATE
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise FlywheelError(f"{path}: cannot read the chat template ({err.strerror})") from None


class Tokenizers:
    """Tokenizers by model name for telling mismatch kinds apart: the one named by
    --tokenizer for every call, else each call's own ``model`` where it names a model
    directory or the embedded model. A name that does not load is tried once, then reported
    through ``warn`` and left out (its mismatches count as ``other``)."""

    def __init__(self, fixed: Any | None = None,
                 warn: Callable[[str], None] = lambda msg: None):
        self.fixed = fixed
        self.warn = warn
        self.loaded: dict[str | None, Any] = {}

    def __call__(self, model: str | None) -> Any | None:
        if self.fixed is not None:
            return self.fixed
        if model not in self.loaded:
            self.loaded[model] = None
            if model:
                try:
                    self.loaded[model] = load_tokenizer(model)
                except FlywheelError as err:
                    self.warn(f"no tokenizer for model {model!r} ({err.message}); mismatch "
                              f"kinds count as 'other' (give --tokenizer MODEL)")
            else:
                self.warn("calls name no model; mismatch kinds count as 'other' "
                          "(give --tokenizer MODEL)")
        return self.loaded[model]
