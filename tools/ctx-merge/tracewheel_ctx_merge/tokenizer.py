"""Tokenizers, loaded once and only when needed (transformers takes seconds to import)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tracewheel.chat_template import load_tokenizer
from tracewheel.errors import TracewheelError


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
                except TracewheelError as err:
                    self.warn(f"no tokenizer for model {model!r} ({err.message}); mismatch "
                              f"kinds count as 'other' (give --tokenizer MODEL)")
            else:
                self.warn("calls name no model; mismatch kinds count as 'other' "
                          "(give --tokenizer MODEL)")
        return self.loaded[model]
