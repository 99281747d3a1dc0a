"""ctx-merge: merge the LLM calls of each trajectory into few training sequences with loss masks."""

from __future__ import annotations

from typing import IO

import click

from tracewheel.cli import common_options, input_options, output_option, tool_command

from .config import FORMATS, ON_MISMATCH, MergeConfig

D = MergeConfig()  # the defaults, stated once (config.py)


@tool_command("ctx-merge")
@common_options
@input_options
@output_option
@click.option("--on-mismatch", type=click.Choice(ON_MISMATCH), default=D.on_mismatch,
              show_default=True,
              help="When a call's prompt does not continue the earlier call its messages repeat: "
                   "start a new sample, or splice it on (keep the sampled tokens, go on from "
                   "its new turns).")
@click.option("--max-len", type=click.IntRange(1), metavar="N",
              help="Split samples at call boundaries to stay within N tokens; a call longer "
                   "than N alone is cut (counted as truncated).")
@click.option("--format", type=click.Choice(FORMATS), default=D.format, show_default=True,
              help="sample: the project's sample records; trl: id, input_ids, assistant_masks "
                   "(TRL's SFTTrainer takes them as pre-tokenized data).")
@click.option("--tokenizer", metavar="MODEL",
              help="A model directory or smollm2-135m. Text mode: renders task records. Token "
                   "mode: tells mismatch kinds apart [default: each call's model, if it loads].")
@click.option("--chat-template", metavar="FILE",
              help="Text mode: a Jinja chat template, or 'model' for the tokenizer's own "
                   "[default: the ChatML-with-tools template vLLM is served with].")
@click.option("--keep-failed", is_flag=True,
              help="Merge failed rollouts (status error or timeout) too; by default they are "
                   "skipped and counted.")
def main(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool, verbose: int,
         on_mismatch: str, max_len: int | None, format: str, tokenizer: str | None,
         chat_template: str | None, keep_failed: bool) -> None:
    """Merge the LLM calls of each trajectory into few training sequences with loss masks.

    Reads rollout records from INPUT (default stdin) and writes sample records: per agent
    timeline, a call whose prompt ids continue an earlier call's prompt + completion ids joins
    its sequence. Completion tokens get loss mask 1 and their logprobs, all else 0. Task
    records (trace-export, no token ids) are rendered with --tokenizer's chat template
    instead, their assistant turns masked 1 (text mode, for SFT).

    \b
    Examples:
      rollout --workflow agent.py:run < tasks.jsonl | ctx-merge > samples.jsonl
      ctx-merge --on-mismatch splice --max-len 4096 rollouts.jsonl -o samples.jsonl
      trace-export db.sqlite | trace-filter | ctx-merge --tokenizer smollm2-135m \\
          --format trl > sft.jsonl
    """
    if chat_template and not tokenizer:
        raise click.UsageError("--chat-template needs --tokenizer (it is for text mode)")
    from .run import run  # records' pydantic models and the tokenizer: not for --help

    cfg = MergeConfig(on_mismatch=on_mismatch, max_len=max_len, format=format,
                      tokenizer=tokenizer, chat_template=chat_template, keep_failed=keep_failed)
    run(cfg, input, output, skip_invalid=skip_invalid, quiet=quiet, verbose=verbose)
