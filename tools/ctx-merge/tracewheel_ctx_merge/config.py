"""ctx-merge's settings, as one dataclass with its defaults (the command line fills it; tests and
other code build it directly)."""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("sample", "trl")
ON_MISMATCH = ("new", "splice")  # what a call that does not continue its timeline does (merge.py)


@dataclass
class MergeConfig:
    on_mismatch: str = "new"           # a call that does not continue its timeline: see merge.py
    max_len: int | None = None         # split samples at call boundaries to stay within this
    format: str = "sample"             # "sample" records, or TRL's pre-tokenized SFT columns
    tokenizer: str | None = None       # text mode's tokenizer; token mode: each call's model
    chat_template: str | None = None   # text mode: a Jinja template file, or "model"
    keep_failed: bool = False          # merge rollouts with status error or timeout too
