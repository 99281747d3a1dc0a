"""task-augment as plain functions over its configs (config.py): what the subcommands run, and
what tests call."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import IO

from tracewheel.cache import Cache, default_cache_path
from tracewheel.cli import Summary, input_name, progress, read_input
from tracewheel.client import LazyClient, describe_api_error, retryable
from tracewheel.errors import TracewheelError
from tracewheel.jsonl import ReadStats, open_output
from tracewheel.models import cache_dir

from .config import DocsConfig, ExpandConfig, GenerationConfig, ParaphraseConfig
from .documents import load_documents
from .engine import Asker, AskSettings, EndpointFailure, Engine
from .expand import expand
from .gate import Gate
from .novelty import History, Novelty, load_corpus
from .paraphrase import paraphrase
from .questions import PER_CHUNK, questions
from .tasks import Seed, seed_of

TOOL = "task-augment"


def default_history_path() -> str:
    return str(cache_dir() / TOOL / "history.sqlite")


def _echo(msg: str) -> None:
    print(f"{TOOL}: {msg}", file=sys.stderr)


class Job:
    """What one subcommand run sets up: summary, novelty index (inputs, corpus, history), the
    reply cache, the lazily started client, the engine and the gate."""

    def __init__(self, stack: contextlib.ExitStack, gen: GenerationConfig, summary: Summary,
                 verbose: int = 0):
        self.summary = summary
        self.verbose = verbose
        self.client = stack.enter_context(LazyClient.of(gen.endpoint, echo=_echo))
        self.endpoint = self.client.endpoint
        self.settings = AskSettings(endpoint=self.endpoint, temperature=gen.temperature,
                                    max_tokens=gen.max_tokens, parse_retries=gen.parse_retries,
                                    structured=gen.structured, seed=gen.seed,
                                    max_thread=gen.max_thread,
                                    request_seeds=gen.request_seeds)
        self.cache = None
        if gen.use_cache:
            self.cache = stack.enter_context(Cache(gen.cache or default_cache_path(TOOL)))
        history = None
        if gen.use_history:
            history = stack.enter_context(History(gen.history or default_history_path()))
        self.novelty = Novelty(threshold=gen.similarity, history=history)
        for path in gen.against:
            n = load_corpus(self.novelty, path)
            if self.verbose:
                _echo(f"{n} tasks of {path} remembered for dedup")
        self.engine = Engine(Asker(self.settings, self.client), self.cache, summary,
                             echo=_echo, verbose=self.verbose)
        self.gate = Gate(self.novelty, summary, echo=_echo, verbose=self.verbose)

    def seeds(self, stream: IO[bytes], skip_invalid: bool) -> list[Seed]:
        """The input tasks that can be examples or be reworded (each remembered for dedup);
        the others are counted as skipped."""
        stats = ReadStats()
        found: list[Seed] = []
        seen: set[str] = set()
        try:
            for record in read_input(stream, "task", skip_invalid=skip_invalid, stats=stats,
                                     tool=TOOL, verbose=self.verbose):
                self.summary.add("read")
                self.novelty.remember("input", record)
                seed = seed_of(record)
                if seed is None:
                    self.summary.add("skipped", reason="follow-up or empty request")
                elif seed.id in seen:
                    self.summary.add("skipped", reason="repeated id")
                else:
                    seen.add(seed.id)
                    found.append(seed)
        finally:
            self.summary.absorb(stats)
        return found

    def write(self, tasks: Iterator[dict], output: str | None, quiet: bool,
              total: int | None) -> None:
        written = 0
        try:
            with open_output(output) as out:
                for task in progress(tasks, total=total, desc=TOOL, quiet=quiet, unit="task"):
                    out.write(task)
                    written += 1
        except EndpointFailure as failure:
            err = failure.error
            what = "did not answer" if isinstance(err, retryable()) else "refused the request"
            if output in (None, "-"):
                done = f"{written} tasks were written before it"
            else:
                done = f"the output file was not written ({written} tasks were ready)"
            resume = ("run again to resume (replies so far are cached)" if self.cache is not None
                      else "with --no-cache a new run asks again from the start")
            raise TracewheelError(
                f"the endpoint {what} ({describe_api_error(err, self.client.endpoint)}); "
                f"{done}; {resume}") from None

    def finish(self, quiet: bool) -> None:
        self.summary.print(quiet)


def _summary() -> Summary:
    return Summary(TOOL, "read", "produced", "unparseable", "duplicate", "off-spec",
                   "requests", "cached", "invalid")




def run_expand(gen: GenerationConfig, cfg: ExpandConfig, input: IO[bytes], output: str | None,
               *, skip_invalid: bool = False, quiet: bool = False, verbose: int = 0) -> None:
    """New tasks in the style of the example tasks in ``input``, written to ``output``."""
    summary = _summary()
    with contextlib.ExitStack() as stack:
        job = Job(stack, gen, summary, verbose)
        try:
            seeds = job.seeds(input, skip_invalid)
            if not seeds:
                if not quiet:
                    _echo(f"no example tasks in {input_name(input)}: nothing to expand")
                with open_output(output):
                    pass
                return
            tasks = expand(seeds, count=cfg.count, engine=job.engine, gate=job.gate,
                           per_request=cfg.per_request, shots=cfg.shots,
                           max_attempts=cfg.max_attempts, seed=gen.seed)
            job.write(tasks, output, quiet, total=cfg.count)
        finally:
            job.finish(quiet)


def run_paraphrase(gen: GenerationConfig, cfg: ParaphraseConfig, input: IO[bytes],
                   output: str | None, *, skip_invalid: bool = False, quiet: bool = False,
                   verbose: int = 0) -> None:
    """Rewordings of each task of ``input`` that keep its reference, written to ``output``."""
    summary = _summary()
    with contextlib.ExitStack() as stack:
        job = Job(stack, gen, summary, verbose)
        try:
            seeds = job.seeds(input, skip_invalid)
            tasks = paraphrase(seeds, per_task=cfg.count, engine=job.engine, gate=job.gate,
                               max_attempts=cfg.max_attempts)
            job.write(tasks, output, quiet, total=cfg.count * len(seeds))
        finally:
            job.finish(quiet)


def run_docs(gen: GenerationConfig, cfg: DocsConfig, documents: tuple[str, ...],
             output: str | None, examples: IO[bytes] | None = None, *,
             skip_invalid: bool = False, quiet: bool = False, verbose: int = 0) -> None:
    """Questions grounded in ``documents``, in the style of ``examples``, written to ``output``."""
    summary = Summary(TOOL, "documents", "chunks", "produced", "with reference", "unparseable",
                      "duplicate", "off-spec", "requests", "cached")
    with contextlib.ExitStack() as stack:
        job = Job(stack, gen, summary, verbose)
        try:
            style = job.seeds(examples, skip_invalid) if examples is not None else []
            loaded = load_documents(list(documents), cfg.chunk_size)
            chunks = sum(len(d.chunks) for d in loaded)
            summary.add("documents", len(loaded))
            summary.add("chunks", chunks)
            if not chunks and not quiet:
                _echo("no text in the documents: nothing to ask about")
            total = cfg.count if cfg.count is not None else PER_CHUNK * chunks
            tasks = questions(loaded, count=total, engine=job.engine, gate=job.gate,
                              per_request=cfg.per_request, max_attempts=cfg.max_attempts,
                              seed=gen.seed, style=style, shots=cfg.shots)
            job.write(tasks, output, quiet, total=total)
        finally:
            job.finish(quiet)
