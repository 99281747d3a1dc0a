"""trace-filter: keep the good tasks, drop the bad ones; learn rubrics from labelled
examples."""

from __future__ import annotations

import re
from typing import IO, Any

import click

from tracewheel.cli import (
    CONTEXT_SETTINGS,
    ToolCommand,
    ask_config,
    ask_options,
    common_options,
    input_options,
    output_option,
    tool_group,
)
from tracewheel.client import endpoint_options

from .config import FilterConfig, LearnConfig
from .run import filter_tasks, learn_from_examples


def _regex(value: str | None) -> str | None:
    """A pattern that does not compile is a usage error, named with its option."""
    if value is not None:
        try:
            re.compile(value)
        except re.error as err:
            raise click.BadParameter(f"not a regular expression: {err}") from None
    return value


F, L = FilterConfig(), LearnConfig()  # the defaults, stated once (config.py)


@tool_group("trace-filter", default="filter")
def main() -> None:
    """Keep the good tasks, drop the bad ones; learn rubrics from labelled examples."""


@main.command("filter", cls=ToolCommand, context_settings=CONTEXT_SETTINGS,
              short_help="Keep the good tasks: rules, dedup, then an LLM judge.")
@common_options
@input_options
@output_option
@endpoint_options
@click.option("--rubrics", help="Your rubrics: a file, or the text itself. Added to the judge's "
                                "built-in base criteria as their own section.")
@click.option("--judge/--no-judge", "use_judge", default=F.use_judge, show_default=True,
              help="Ask the LLM judge (after the rule filters); --no-judge: rules only.")
@click.option("--temperature", type=float, default=F.temperature, show_default=True,
              help="Judge sampling temperature (retries of unparseable replies use at least 0.7).")
@click.option("--max-tokens", type=click.IntRange(16), default=F.max_tokens,
              show_default=True,
              help="Judge response length.")
@click.option("--print-reason", is_flag=True, help="Print each verdict and its reason to stderr.")
@click.option("--require-boxed", is_flag=True, help="Drop answers without \\boxed{...}.")
@click.option("--require-regex", callback=lambda ctx, param, value: _regex(value),
              help="Drop answers that do not match this regular expression.")
@click.option("--min-len", type=click.IntRange(0), help="Drop answers shorter than N characters.")
@click.option("--max-len", type=click.IntRange(0), help="Drop answers longer than N characters.")
@click.option("--drop-errors", is_flag=True, help="Drop failed turns and turns without an answer.")
@click.option("--require-reference", is_flag=True,
              help="Drop tasks without a reference answer (a boxed reward needs one).")
@click.option("--check-reference", is_flag=True,
              help="Drop answers whose final value contradicts the task's reference: "
                   "\\boxed{} values, else the last number, else a short answer, compared as "
                   "numbers where both are. What it cannot decide goes on (--undecided).")
@click.option("--undecided", type=click.Choice(["keep", "drop"]), default=None,
              help="With --check-reference: a record the check cannot decide (no reference, "
                   "no final value, texts that may mean the same) goes on to the other "
                   "filters and the judge (keep, the default), or is dropped.")
@click.option("--dedup", is_flag=True,
              help="Drop tasks whose conversation repeats an earlier one (exact after "
                   "normalising, or near: MinHash similarity at least --similarity).")
@click.option("--similarity", type=click.FloatRange(0, 1, min_open=True), default=F.similarity,
              show_default=True, help="Near-duplicate threshold for --dedup (1: exact only).")
@click.option("--against", type=click.Path(exists=True, dir_okay=False),
              help="With --dedup: also drop tasks already in this task JSONL corpus.")
@click.option("--annotate", is_flag=True,
              help="Write every record, each with its `judge` field (keep, drop or error).")
@click.option("--invert", is_flag=True, help="Write the dropped records instead of the kept.")
@click.option("--unordered", is_flag=True, help="Write records as they are judged, not in order.")
@ask_options("trace-filter", requests="Judge requests",
             unparsed="a verdict counts as error")
def filter_command(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool,
                   verbose: int, **options: Any) -> None:
    """Keep the good tasks, drop the bad ones: rule filters, dedup, then an LLM judge with your
    rubrics. Reads task records (from trace-export or task-augment) from INPUT (default stdin).

    The judge is any OpenAI-compatible endpoint (--base-url, or OPENAI_BASE_URL); with none, the
    embedded model is served by vLLM on this machine for the run. Verdicts are cached: a second
    run over the same input makes no LLM calls. `trace-filter learn-rubrics --help`: rubrics
    learned from examples a person labelled.

    \b
    Examples:
      trace-export db.sqlite | trace-filter --rubrics rubrics.txt > tasks.jsonl
      trace-filter --no-judge --require-boxed --dedup < tasks.jsonl > boxed.jsonl
      trace-filter --drop-errors --check-reference --undecided drop < tasks.jsonl > right.jsonl
      trace-filter --base-url http://gpu:8000/v1 --model Qwen3-8B --max-thread 64 \\
          --rubrics "Drop the task if the answer is wrong." --annotate < t.jsonl > judged.jsonl
    """
    o = FilterConfig(**ask_config(options), **options)
    if o.annotate and o.invert:
        raise click.UsageError("--annotate and --invert cannot be used together "
                               "(--annotate already writes every record)")
    if o.against and not o.dedup:
        raise click.UsageError("--against needs --dedup")
    if o.undecided and not o.check_reference:
        raise click.UsageError("--undecided needs --check-reference")
    filter_tasks(o, input, output, skip_invalid=skip_invalid, quiet=quiet, verbose=verbose)


@main.command("learn-rubrics", cls=ToolCommand, context_settings=CONTEXT_SETTINGS,
              short_help="Rubrics learned from examples a person labelled.")
@common_options
@input_options
@output_option
@endpoint_options
@click.option("--rubrics", help="Rubrics to start from (a file, or the text): the first "
                                "candidate, revised like the others.")
@click.option("--candidates", type=click.IntRange(1), default=L.candidates,
              show_default=True, help="Rubric texts proposed from the examples, each shown "
                                      "them in its own order.")
@click.option("--rounds", type=click.IntRange(0), default=L.rounds,
              show_default=True, help="Revisions of the best text from the examples it gets "
                                      "wrong.")
@click.option("--shots", type=click.IntRange(1), default=L.shots,
              show_default=True, help="Examples shown in one prompt.")
@click.option("--seed", type=int, default=L.seed, show_default=True,
              help="Which examples each prompt shows, and in what order.")
@click.option("--temperature", type=click.FloatRange(0), default=L.temperature,
              show_default=True, help="Sampling temperature of the proposals and the judge.")
@click.option("--max-tokens", type=click.IntRange(16), default=L.max_tokens,
              show_default=True, help="Length of a proposal and of a verdict.")
@click.option("--scores", type=click.Path(dir_okay=False),
              help="Write every candidate (text, agreement, confusion counts) as JSONL to FILE.")
@ask_options("trace-filter", requests="Requests (proposals and judge)",
             unparsed="that verdict or proposal counts as error")
def learn_rubrics_command(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool,
                          verbose: int, **options: Any) -> None:
    """Learn rubrics from labelled examples: the judge model proposes rubric texts from them,
    each text is scored by judging the examples with it, the best is revised from what it gets
    wrong, and the text that agrees best with the labels is written (to OUTPUT or stdout), for
    `trace-filter --rubrics`. Its agreement goes to stderr (every candidate's: --scores).

    An example is a task record with `label` (keep or drop) and an optional `label_reason`, or
    a record of `trace-filter --annotate` output whose `judge.verdict` a person checked.
    Replies and verdicts are cached: a re-run with the same settings asks nothing and writes
    the same text.

    \b
    Examples:
      trace-filter --annotate < tasks.jsonl | head -20 > examples.jsonl  # then correct them
      trace-filter learn-rubrics examples.jsonl -o rubrics.txt
      trace-filter --rubrics rubrics.txt < tasks.jsonl > kept.jsonl
    """
    o = LearnConfig(**ask_config(options), **options)
    learn_from_examples(o, input, output, skip_invalid=skip_invalid,
                        quiet=quiet, verbose=verbose)
