"""ctx-merge as plain functions over MergeConfig: what the command runs, and what tests call."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from tracewheel.chat_template import load_tokenizer, template_text
from tracewheel.cli import Summary, hint_if_waiting, input_name, progress
from tracewheel.errors import RecordError
from tracewheel.jsonl import ReadStats, open_output, read_jsonl
from tracewheel.records import validate_rollout, validate_task

from .config import MergeConfig
from .merge import TokenizerFor, merge_rollout
from .sequences import MergeStats
from .text_mode import merge_task
from .tokenizer import Tokenizers

FAILED = ("error", "timeout")


def is_task(record: dict) -> bool:
    """Task records (text mode) have a query and no calls; everything else is a rollout."""
    return "calls" not in record and "query" in record


def record_validator(text_mode: bool) -> Callable[[dict], dict]:
    def validate(record: dict) -> dict:
        if not is_task(record):
            return validate_rollout(record)
        if not text_mode:
            raise RecordError("a task record has no token ids: give --tokenizer MODEL to "
                              "render it (text mode)")
        return validate_task(record)

    return validate


def merge_records(records: Iterable[dict], *, on_mismatch: str = MergeConfig.on_mismatch,
                  max_len: int | None = None, tokenizer: Any | None = None,
                  chat_template: str | None = None, tokenizer_for: TokenizerFor | None = None,
                  keep_failed: bool = False, stats: MergeStats | None = None,
                  warn: Callable[[str], None] | None = None) -> Iterator[dict]:
    """The samples of rollout records (token mode) and task records (text mode, which needs
    ``tokenizer``), lazily; failed records are skipped and counted unless ``keep_failed``."""
    stats = stats if stats is not None else MergeStats()
    tokenizer_for = tokenizer_for or Tokenizers(tokenizer)
    for record in records:
        status = record.get("status")
        if status in FAILED:
            if not keep_failed:
                stats.failed[status] += 1
                if warn:
                    warn(f"{record['id']}: skipped, {status}: "
                         f"{record.get('error') or 'no error text'}")
                continue
            stats.failed_kept += 1
        if is_task(record):
            yield from merge_task(record, tokenizer=tokenizer, chat_template=chat_template,
                                  max_len=max_len, stats=stats)
        else:
            yield from merge_rollout(record, on_mismatch=on_mismatch, max_len=max_len,
                                     tokenizer_for=tokenizer_for, stats=stats)


def to_trl(sample: dict) -> dict:
    """TRL's pre-tokenized SFT columns: SFTTrainer makes labels of ``assistant_masks``."""
    return {"id": sample["id"], "input_ids": sample["input_ids"],
            "assistant_masks": sample["loss_mask"]}


def summarize(summary: Summary, read: ReadStats, stats: MergeStats) -> None:
    """The closing line: records read, calls in, samples out, what was skipped and why, and the
    training tokens of one sample per call beside those of the merged samples."""
    summary.add("read", read.records)
    summary.add("calls", stats.calls)
    summary.add("samples", stats.samples)
    summary.add("failed", 0)
    for status, n in stats.failed.items():
        summary.add("failed", n, reason=f"{status}, skipped")
    if stats.failed_kept:
        summary.add("failed", stats.failed_kept, reason="kept")
    summary.add("mismatches", 0)
    for kind, n in stats.mismatches.most_common():
        summary.add("mismatches", n, reason=kind)
    if stats.spliced:
        summary.add("spliced", stats.spliced)
    if stats.truncated:
        summary.add("truncated", stats.truncated)
    for reason, n in stats.dropped.items():
        summary.add("dropped", n, reason=reason)
    summary.absorb(read)
    if stats.tokens_merged:
        summary.extra.append(
            f"training tokens {stats.tokens_separate} as separate calls, "
            f"{stats.tokens_merged} merged ({stats.tokens_separate / stats.tokens_merged:.2f}x "
            f"fewer), {stats.trained} trained")




def run(cfg: MergeConfig, input: IO[bytes], output: str | None, *, skip_invalid: bool = False,
        quiet: bool = False, verbose: int = 0) -> None:
    """Read rollout (or task) records from ``input``, write samples to ``output`` (stdout when
    None, else atomically), and print the summary, however the run ends."""
    def echo(msg: str) -> None:
        print(f"ctx-merge: {msg}", file=sys.stderr)

    template = template_text(cfg.chat_template) if cfg.tokenizer else None
    fixed = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    summary, stats, read = Summary("ctx-merge"), MergeStats(), ReadStats()
    hint_if_waiting(input, "ctx-merge")
    records = read_jsonl(input, input_name(input), validate=record_validator(fixed is not None),
                         skip_invalid=skip_invalid, stats=read, warn=echo if verbose else None)
    samples = merge_records(
        progress(records, desc="ctx-merge", quiet=quiet), on_mismatch=cfg.on_mismatch,
        max_len=cfg.max_len, tokenizer=fixed, chat_template=template,
        tokenizer_for=Tokenizers(fixed, warn=echo), keep_failed=cfg.keep_failed, stats=stats,
        warn=echo if verbose else None)
    try:
        with open_output(output) as out:
            for sample in samples:
                out.write(to_trl(sample) if cfg.format == "trl" else sample)
    finally:
        summarize(summary, read, stats)
        summary.print(quiet)
