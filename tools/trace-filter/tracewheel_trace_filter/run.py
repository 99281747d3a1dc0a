"""A filter run, as `trace-filter filter` carries it out: rules, then dedup, then the judge
(asked concurrently, its verdicts cached), each record written or dropped in input order.
Plain functions over ``FilterConfig`` and ``LearnConfig`` (config.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import IO, Any

import click

from tracewheel.ask import JsonAsker
from tracewheel.cache import Cache, default_cache_path
from tracewheel.cli import AskConfig, Summary, progress, read_input
from tracewheel.client import (
    Endpoint,
    LazyClient,
    api_errors,
    bounded_map,
    describe_api_error,
    retryable,
)
from tracewheel.errors import TracewheelError
from tracewheel.jsonl import ReadStats, atomic_path, open_output, read_jsonl
from tracewheel.judge import Judge, JudgeSettings, VerdictError, rubrics_text

from . import learn, rules
from .config import FilterConfig, LearnConfig
from .learn import LearnSettings


def filter_tasks(o: FilterConfig, input: IO[bytes], output: str | None, *,
                 skip_invalid: bool, quiet: bool, verbose: int) -> None:
    summary = Summary("trace-filter", "read", "kept", "dropped", "error", "invalid")
    check = rules.ReferenceCheck(o.undecided or "keep") if o.check_reference else None
    if check is not None:
        summary.add("undecided", 0)
    rule_list = rules.rule_list(
        drop_errors=o.drop_errors, require_reference=o.require_reference, check=check,
        min_len=o.min_len, max_len=o.max_len, require_boxed=o.require_boxed,
        require_regex=o.require_regex)
    deduper = _deduper(o, verbose)

    def echo(msg: str) -> None:
        click.echo(f"trace-filter: {msg}", err=True)

    with contextlib.ExitStack() as stack:
        judge = cache = settings = client = None
        if o.use_judge:
            judge, cache, settings, client = _judge(stack, o, echo, summary)
        stats = ReadStats()
        records = read_input(input, "task", skip_invalid=skip_invalid, stats=stats,
                             tool="trace-filter", verbose=verbose,
                             also=check.validate if check is not None else None)
        decided = decide(records, rule_list=rule_list, deduper=deduper, judge=judge,
                         settings=settings, client=client, cache=cache,
                         max_thread=o.max_thread, unordered=o.unordered, summary=summary)
        out = stack.enter_context(open_output(output))
        try:
            for record, verdict in progress(decided, desc="trace-filter", quiet=quiet):
                summary.add("read")
                checked = check.take(record) if check is not None else None
                if checked is not None:
                    verdict = {**verdict, "reference_check": checked.to_dict()}
                    if checked.outcome == "undecided":
                        summary.add("undecided", reason=checked.kind)
                kind = verdict["verdict"]
                summary.add({"keep": "kept", "drop": "dropped", "error": "error"}[kind],
                            reason=verdict.get("by") if kind == "drop" else None)
                if kind == "error":
                    echo(f"{record['id']}: no verdict: {verdict['reason']}")
                elif o.print_reason:
                    echo(f"{record['id']}: {kind} ({verdict.get('by')}): {verdict['reason']}")
                if o.annotate:
                    out.write({**record, "judge": verdict})
                elif (kind == "keep") != o.invert and kind != "error":
                    out.write(record)
            if summary.counts["error"] and not summary.counts["judged"] and not (
                    cache is not None and cache.hits):
                raise TracewheelError(
                    f"the judge gave no verdict: each of the {summary.counts['error']} records "
                    f"it was asked about is an error (see above)"
                    f"{'; the output file was not written' if output not in (None, '-') else ''}")
        finally:
            summary.absorb(stats)
            if cache is not None:
                summary.extra.append(f"{cache.hits} cached")
            summary.print(quiet)


def _deduper(o: FilterConfig, verbose: int) -> Any:
    """--dedup's deduper, with --against's tasks remembered; None without --dedup."""
    if not o.dedup:
        return None
    from tracewheel.dedup import Deduper  # datasketch imports scipy: only when asked

    deduper = Deduper(threshold=o.similarity)
    if o.against:
        n = _load_corpus(deduper, o.against)
        if verbose:
            click.echo(f"trace-filter: {n} tasks of {o.against} remembered for --dedup", err=True)
    return deduper


def _judge(stack: contextlib.ExitStack, o: FilterConfig, echo: Callable[[str], None],
           summary: Summary) -> tuple[Judge, Cache | None, JudgeSettings, Any]:
    """The judge (its client closed with ``stack``), its cache, its settings, its client."""
    endpoint, client = judge_client(stack, o, echo)
    settings = JudgeSettings(endpoint=endpoint, rubrics=rubrics_text(o.rubrics),
                             temperature=o.temperature, max_tokens=o.max_tokens,
                             parse_retries=o.parse_retries, structured=o.structured)
    judge = Judge(settings, client, on_retry=lambda n, err, d: summary.add("retries"))
    return judge, _cache(stack, o), settings, client


def _cache(stack: contextlib.ExitStack, o: AskConfig) -> Cache | None:
    if not o.use_cache:
        return None
    return stack.enter_context(Cache(o.cache or default_cache_path("trace-filter")))


def _load_corpus(deduper: Any, path: str) -> int:
    """Remember the tasks of an existing corpus, so tasks already in it count as copies."""
    count = 0
    with open(path, "rb") as stream:
        for record in read_jsonl(stream, path, hint=None):  # no --skip-invalid for it
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


def judge_client(stack: contextlib.ExitStack, o: AskConfig,
                 echo: Callable[[str], None]) -> tuple[Endpoint, LazyClient]:
    """The judge's endpoint, and its client: the embedded model, served on first use, when no
    --base-url is given."""
    client = stack.enter_context(LazyClient.of(o.endpoint, echo=echo))
    return client.endpoint, client


def decide(records: Iterator[dict], *, rule_list: list, deduper: Any, judge: Judge | None,
           settings: JudgeSettings | None, client: LazyClient | None, cache: Cache | None,
           max_thread: int, unordered: bool, summary: Summary) -> Iterator[tuple[dict, dict]]:
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

    def remember(record: dict, result: dict) -> None:
        """A fresh verdict into the cache: one that came back after the run had to stop is
        kept too, so a resume does not pay for it again."""
        if cache is not None and result.get("by") is None:
            cache.put(settings.key(record), result)

    results = bounded_map(ask, records, workers=max_thread, ordered=not unordered, ready=cheap,
                          abandoned=remember)
    for record, result in results:
        if isinstance(result, VerdictError):
            yield record, {"verdict": "error", "by": "judge", "reason": str(result), **labels}
        elif isinstance(result, BaseException):
            if not isinstance(result, api_errors()):
                raise result
            what = "did not answer" if isinstance(result, retryable()) else "refused the request"
            results.close()  # the verdicts that came back meanwhile go into the cache
            raise TracewheelError(
                f"the judge endpoint {what} ({describe_api_error(result, client.endpoint)}); "
                f"{summary.counts['read']} records were written or counted before it; " + (
                    "run again to resume (verdicts so far are cached)" if cache is not None
                    else "with --no-cache a new run asks again from the start"))
        else:
            if result.get("by") is None:  # a fresh judge verdict
                remember(record, result)
                summary.add("judged")
                result = {**result, "by": "judge", **labels}
            yield record, result


def learn_from_examples(o: LearnConfig, input: IO[bytes], output: str | None, *,
                        skip_invalid: bool, quiet: bool, verbose: int) -> None:
    """Rubrics learned from the labelled examples of ``input``, written to ``output``."""
    settings = LearnSettings(candidates=o.candidates, rounds=o.rounds, shots=o.shots,
                             seed=o.seed, temperature=o.temperature, max_tokens=o.max_tokens,
                             parse_retries=o.parse_retries)
    summary = Summary("trace-filter learn-rubrics", "examples", "invalid")

    def echo(msg: str) -> None:
        click.echo(f"trace-filter learn-rubrics: {msg}", err=True)

    examples, labels = _examples(input, summary, echo, skip_invalid=skip_invalid,
                                 verbose=verbose)
    with contextlib.ExitStack() as stack:
        endpoint, client = judge_client(stack, o, echo)
        cache = _cache(stack, o)
        on_retry = lambda n, err, d: summary.add("retries")  # noqa: E731
        propose = learn.Proposer(JsonAsker(endpoint, client, structured=o.structured,
                                           on_retry=on_retry), settings, cache)

        def score(text: str | None) -> list[dict]:
            judge_settings = JudgeSettings(endpoint=endpoint, rubrics=text,
                                           temperature=o.temperature, max_tokens=o.max_tokens,
                                           parse_retries=o.parse_retries,
                                           structured=o.structured)
            judge = Judge(judge_settings, client, on_retry=on_retry)
            return [verdict for _, verdict in decide(
                iter(examples), rule_list=[], deduper=None, judge=judge, settings=judge_settings,
                client=client, cache=cache, max_thread=o.max_thread, unordered=False,
                summary=summary)]

        def shown(c: learn.Candidate) -> None:
            if not quiet:
                echo(f"{c.origin}: {c.agree}/{len(examples)} agree ({c.agreement:.0%})"
                     f"{f', {c.errors} errors' if c.errors else ''}")

        found = learn.learn_rubrics(examples, labels, propose, score, settings,
                                    start=rubrics_text(o.rubrics), on_candidate=shown)
        chosen = learn.best(found)
        if chosen.text is None:
            raise TracewheelError(f"no proposal parsed ({propose.failed} unparseable replies); "
                                f"try --parse-retries, or a stronger --model")
        if output and output != "-":
            with atomic_path(output) as tmp:
                tmp.write_text(chosen.text + "\n", encoding="utf-8")
        else:
            click.echo(chosen.text)
        if o.scores:
            with open_output(o.scores) as out:
                for c in found:
                    out.write({**c.summary(), "chosen": c is chosen})
        baseline = found[0]
        summary.extra += [f"{len(found)} candidates",
                          f"best {chosen.origin} {chosen.agree}/{len(examples)} agree "
                          f"({chosen.agreement:.0%}) vs {baseline.origin} "
                          f"{baseline.agree}/{len(examples)}",
                          f"{propose.requests} proposals asked ({propose.failed} unparseable)"]
        if cache is not None:
            summary.extra.append(f"{cache.hits} cached")
        summary.print(quiet)


def _examples(input: IO[bytes], summary: Summary, echo: Any, *, skip_invalid: bool,
              verbose: int) -> tuple[list[dict], list]:
    """The labelled examples and their labels; fewer than two is an error."""
    stats = ReadStats()
    try:
        examples = list(read_input(input, "task", skip_invalid=skip_invalid, stats=stats,
                                   tool="trace-filter learn-rubrics", verbose=verbose,
                                   also=learn.validate_example))
    finally:
        summary.absorb(stats)
    summary.add("examples", len(examples))
    labels = [learn.example_label(e) for e in examples]
    kinds = {label for label, _ in labels}
    if len(examples) < 2:
        raise TracewheelError(f"{len(examples)} labelled example(s): learning rubrics needs at "
                            f"least 2, best with both labels")
    if len(kinds) == 1:
        echo(f"warning: every example is labelled {kinds.pop()}: the rubrics cannot learn "
             f"the other verdict")
    return examples, labels
