"""trace-filter: keep the good tasks, drop the bad ones."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO, Any

import click

from flywheel.cache import Cache, default_cache_path
from flywheel.cli import (
    Summary,
    common_options,
    input_options,
    output_option,
    progress,
    read_input,
    tool_command,
)
from flywheel.client import (
    Endpoint,
    LazyClient,
    api_errors,
    bounded_map,
    describe_api_error,
    endpoint_options,
    retryable,
)
from flywheel.errors import FlywheelError
from flywheel.jsonl import ReadStats, open_output, read_jsonl
from flywheel.judge import Judge, JudgeSettings, VerdictError, rubrics_text
from flywheel.models import EMBEDDED_MODEL

from . import rules


def _rule_list(require_boxed: bool, require_regex: str | None, min_len: int | None,
               max_len: int | None, drop_errors: bool,
               require_reference: bool) -> list[tuple[str, rules.Rule]]:
    chosen: list[tuple[str, rules.Rule]] = []
    if drop_errors:
        chosen.append(("drop-errors", rules.drop_errors))
    if require_reference:
        chosen.append(("require-reference", rules.require_reference))
    if min_len is not None or max_len is not None:
        chosen.append(("length", rules.length_between(min_len, max_len)))
    if require_boxed:
        chosen.append(("require-boxed", rules.require_boxed))
    if require_regex:
        chosen.append(("require-regex", rules.require_regex(require_regex)))
    return chosen


def _load_corpus(deduper: Any, path: str) -> int:
    """Remember the tasks of an existing corpus, so tasks already in it count as copies."""
    count = 0
    with open(path, "rb") as stream:
        for record in read_jsonl(stream, path):
            deduper.check(f"corpus:{record.get('id', count)}", dedup_text(record))
            count += 1
    return count


def dedup_text(record: dict) -> str:
    """What makes a task the same task: the conversation up to the request, not the request
    alone ("Thanks, correct!" after two different answers is two different tasks)."""
    turns = [m.get("content") for m in record.get("messages") or []
             if m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)]
    return "\n".join(turns) if turns else (record.get("query") or "")


def _drop(by: str, reason: str) -> dict:
    return {"verdict": "drop", "by": by, "reason": reason}


@tool_command("trace-filter")
@common_options
@input_options
@output_option
@endpoint_options
@click.option("--rubrics", help="Your rubrics: a file, or the text itself. Added to the judge's "
                                "built-in base criteria as their own section.")
@click.option("--judge/--no-judge", "use_judge", default=True, show_default=True,
              help="Ask the LLM judge (after the rule filters); --no-judge: rules only.")
@click.option("--temperature", type=float, default=0.0, show_default=True,
              help="Judge sampling temperature (retries of unparseable replies use at least 0.7).")
@click.option("--max-tokens", type=click.IntRange(16), default=512, show_default=True,
              help="Judge response length.")
@click.option("--max-thread", type=click.IntRange(1), default=8, show_default=True,
              help="Judge requests in flight at once.")
@click.option("--parse-retries", type=click.IntRange(0), default=2, show_default=True,
              help="Asks again when a reply is not a verdict; then the record counts as error.")
@click.option("--no-structured", is_flag=True,
              help="Do not ask for JSON-schema output (for endpoints without it); parse strictly.")
@click.option("--print-reason", is_flag=True, help="Print each verdict and its reason to stderr.")
@click.option("--require-boxed", is_flag=True, help="Drop answers without \\boxed{...}.")
@click.option("--require-regex", help="Drop answers that do not match this regular expression.")
@click.option("--min-len", type=click.IntRange(0), help="Drop answers shorter than N characters.")
@click.option("--max-len", type=click.IntRange(0), help="Drop answers longer than N characters.")
@click.option("--drop-errors", is_flag=True, help="Drop failed turns and turns without an answer.")
@click.option("--require-reference", is_flag=True,
              help="Drop tasks without a reference answer (a boxed reward needs one).")
@click.option("--dedup", is_flag=True,
              help="Drop tasks whose conversation repeats an earlier one (exact after "
                   "normalising, or near: MinHash similarity at least --similarity).")
@click.option("--similarity", type=click.FloatRange(0, 1, min_open=True), default=0.8,
              show_default=True, help="Near-duplicate threshold for --dedup (1: exact only).")
@click.option("--against", type=click.Path(exists=True, dir_okay=False),
              help="With --dedup: also drop tasks already in this task JSONL corpus.")
@click.option("--annotate", is_flag=True,
              help="Write every record, each with its `judge` field (keep, drop or error).")
@click.option("--invert", is_flag=True, help="Write the dropped records instead of the kept.")
@click.option("--unordered", is_flag=True, help="Write records as they are judged, not in order.")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False),
              help="Verdict cache file [default: $FLYWHEEL_CACHE/trace-filter/cache.sqlite].")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the verdict cache.")
def main(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool, verbose: int,
         base_url: str | None, model: str | None, api_key: str | None, timeout: float,
         retries: int, rubrics: str | None, use_judge: bool, temperature: float,
         max_tokens: int, max_thread: int, parse_retries: int, no_structured: bool,
         print_reason: bool, require_boxed: bool, require_regex: str | None,
         min_len: int | None, max_len: int | None, drop_errors: bool,
         require_reference: bool, dedup: bool,
         similarity: float, against: str | None, annotate: bool, invert: bool, unordered: bool,
         cache_path: str | None, no_cache: bool) -> None:
    """Keep the good tasks, drop the bad ones: rule filters, dedup, then an LLM judge with your
    rubrics. Reads task records (from trace-export or task-augment) from INPUT (default stdin).

    The judge is any OpenAI-compatible endpoint (--base-url, or OPENAI_BASE_URL); with none, the
    embedded model is served by vLLM on this machine for the run. Verdicts are cached: a second
    run over the same input makes no LLM calls.

    \b
    Examples:
      trace-export db.sqlite | trace-filter --rubrics rubrics.txt > tasks.jsonl
      trace-filter --no-judge --require-boxed --dedup < tasks.jsonl > boxed.jsonl
      trace-filter --base-url http://gpu:8000/v1 --model Qwen3-8B --max-thread 64 \\
          --rubrics "Drop the task if the answer is wrong." --annotate < t.jsonl > judged.jsonl
    """
    if annotate and invert:
        raise click.UsageError("--annotate and --invert cannot be used together "
                               "(--annotate already writes every record)")
    if against and not dedup:
        raise click.UsageError("--against needs --dedup")
    summary = Summary("trace-filter", "read", "kept", "dropped", "error", "invalid")
    rule_list = _rule_list(require_boxed, require_regex, min_len, max_len, drop_errors,
                           require_reference)
    deduper = None
    if dedup:
        from flywheel.dedup import Deduper  # datasketch imports scipy: only when asked

        deduper = Deduper(threshold=similarity)
    if deduper and against:
        n = _load_corpus(deduper, against)
        if verbose:
            click.echo(f"trace-filter: {n} tasks of {against} remembered for --dedup", err=True)

    def echo(msg: str) -> None:
        click.echo(f"trace-filter: {msg}", err=True)

    with contextlib.ExitStack() as stack:
        judge = cache = settings = client = None
        if use_judge:
            if base_url and not model:
                raise click.UsageError("--model is needed with --base-url (or FLYWHEEL_MODEL)")
            endpoint = Endpoint(base_url, model or EMBEDDED_MODEL, api_key, timeout, retries)
            client = stack.enter_context(
                LazyClient(endpoint, serve=None if base_url else EMBEDDED_MODEL, echo=echo))
            settings = JudgeSettings(endpoint, rubrics_text(rubrics), temperature, max_tokens,
                                     parse_retries, structured=not no_structured)
            judge = Judge(settings, client, on_retry=lambda n, err, d: summary.add("retries"))
            if not no_cache:
                cache = stack.enter_context(Cache(cache_path or default_cache_path("trace-filter")))

        stats = ReadStats()
        records = read_input(input, "task", skip_invalid=skip_invalid, stats=stats,
                             tool="trace-filter", verbose=verbose)
        decided = _decide(records, rule_list, deduper, judge, settings, client, cache,
                          max_thread, unordered, summary)
        out = stack.enter_context(open_output(output))
        try:
            for record, verdict in progress(decided, desc="trace-filter", quiet=quiet):
                summary.add("read")
                kind = verdict["verdict"]
                summary.add({"keep": "kept", "drop": "dropped", "error": "error"}[kind],
                            reason=verdict.get("by") if kind == "drop" else None)
                if kind == "error":
                    echo(f"{record['id']}: no verdict: {verdict['reason']}")
                elif print_reason:
                    echo(f"{record['id']}: {kind} ({verdict.get('by')}): {verdict['reason']}")
                if annotate:
                    out.write({**record, "judge": verdict})
                elif (kind == "keep") != invert and kind != "error":
                    out.write(record)
        finally:
            summary.absorb(stats)
            if cache is not None:
                summary.extra.append(f"{cache.hits} cached")
            summary.print(quiet)


def _decide(records: Iterator[dict], rule_list, deduper: Any, judge: Judge | None,
            settings: JudgeSettings | None, client: LazyClient | None, cache: Cache | None,
            workers: int, unordered: bool, summary: Summary) -> Iterator[tuple[dict, dict]]:
    """Each record with its verdict, rules and dedup first, the judge only for what passes."""
    labels: dict[str, Any] = {}
    if settings is not None:
        labels = {"model": settings.endpoint.model, "rubric": settings.rubric_hash}

    def cheap(record: dict) -> dict | None:
        for name, rule in rule_list:
            reason = rule(record)
            if reason:
                return _drop(f"rule:{name}", reason)
        if deduper is not None:
            dup = deduper.check(record["id"], dedup_text(record))
            if dup:
                return _drop(f"dedup:{dup[0]}", f"duplicates {dup[1]}")
        if judge is None:
            return {"verdict": "keep", "by": "rules", "reason": "passed the rule filters"}
        if cache is not None:
            hit = cache.get(settings.key(record))
            if hit is not None:
                return {**hit, "by": "judge", **labels}
        return None

    def ask(record: dict) -> dict:
        return judge(record)

    for record, result in bounded_map(ask, records, workers=workers, ordered=not unordered,
                                      ready=cheap):
        if isinstance(result, VerdictError):
            yield record, {"verdict": "error", "by": "judge", "reason": str(result), **labels}
        elif isinstance(result, BaseException):
            if not isinstance(result, api_errors()):
                raise result
            what = "did not answer" if isinstance(result, retryable()) else "refused the request"
            raise FlywheelError(
                f"the judge endpoint {what} ({describe_api_error(result, client.endpoint)}); "
                f"{summary.counts['read']} records were written or counted before it; "
                f"run again to resume (verdicts so far are cached)")
        else:
            if result.get("by") is None:  # a fresh judge verdict: cache it
                if cache is not None:
                    cache.put(settings.key(record), result)
                summary.add("judged")
                result = {**result, "by": "judge", **labels}
            yield record, result
