"""What every tool's command line shares: options spelled the same everywhere, quiet exit on a
closed stdout, one-line errors (traceback with -v), the stderr summary line and progress bars."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

import click

from .client import Endpoint
from .config import load_config_defaults
from .errors import DataError, TracewheelError
from .extras import missing_extra
from .jsonl import ReadStats, read_jsonl

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _quiet_stdout() -> None:
    """After a reader closed our stdout (``| head``), make the final flush harmless."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that what Ctrl-C cleans up (a
    temporary output file, a server the tool started) is cleaned up for them too."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """While a tool runs, SIGTERM and SIGHUP end it the way Ctrl-C does (the default action
    would kill it on the spot, leaving its temporary files and servers behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_terminated)
                for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Ends:
    """How every tool's process ends: SIGTERM and SIGHUP as Ctrl-C, a closed stdout quietly."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            with signals_as_exceptions():
                return super().main(*args, **kwargs)  # type: ignore[misc]
        except BrokenPipeError:
            _quiet_stdout()
            sys.exit(0)


def _exit_now_if_threads_linger(code: int) -> None:
    """After a signal, the tool's own cleanup is done (output files, servers); what may remain
    are worker threads inside a request (a judge call waiting out its timeout), which the
    interpreter would wait for before exiting, retries and all. End the process now instead."""
    me = threading.current_thread()
    if not any(t is not me and t.is_alive() and not t.daemon for t in threading.enumerate()):
        return
    vllm = sys.modules.get("tracewheel.vllm")
    if vllm is not None:  # servers still up (none, normally) are stopped as at exit
        vllm.stop_all()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


class ToolCommand(_Ends, click.Command):
    """A click command with the toolkit's conventions for ending.

    - a closed stdout ends the tool quietly, exit 0 (``tool | head -1`` is normal use)
    - a TracewheelError prints one line, exit 1; an unexpected error prints one line too, and the
      traceback only with ``-v``
    - Ctrl-C exits 130 without a traceback; SIGTERM and SIGHUP exit 128 + the signal's number,
      after the same cleanup
    """

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The default subcommand's help (what ``tool --help`` shows) lists the subcommands."""
        super().format_epilog(ctx, formatter)
        group = ctx.parent.command if ctx.parent is not None else None
        if isinstance(group, ToolGroup) and ctx.command.name == group.default:
            rows = [(f"{name} (default)" if name == group.default else name,
                     command.get_short_help_str(limit=300))
                    for name, command in group.commands.items()]
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _quiet_stdout()
            ctx.exit(0)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt as err:
            signum = getattr(err, "signum", None)
            click.echo("Terminated." if signum else "Interrupted.", err=True)
            code = 128 + signum if signum else 130
            _exit_now_if_threads_linger(code)
            ctx.exit(code)
        except ModuleNotFoundError as err:
            if ctx.params.get("verbose"):
                traceback.print_exc()
            message = missing_extra(err.name, _tool_name(ctx))
            if message is None:
                raise TracewheelError(f"{type(err).__name__}: {err} (run with -v for the "
                                    f"traceback)") from err
            raise TracewheelError(message) from err
        except Exception as err:  # the last line of defence: one line, never a bare traceback
            if ctx.params.get("verbose"):
                traceback.print_exc()
            raise TracewheelError(
                f"{type(err).__name__}: {err} (run with -v for the traceback)"
            ) from err



CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100,
                    "auto_envvar_prefix": None}


def tool_command(name: str) -> Callable[[F], click.Command]:
    """``@click.command`` with the toolkit's conventions; the docstring is the help text."""
    def decorate(f: F) -> click.Command:
        return click.command(name=name, cls=ToolCommand, context_settings=CONTEXT_SETTINGS)(
            version_option(f))
    return decorate


def exit_status(command: click.Command, args: list[str] | None, prog_name: str,
                obj: Any = None) -> int:
    """Run ``command`` as a program would, but return its exit status instead of exiting: 0,
    1 for an error, 2 for a usage error (``python -m`` entry points that tests call)."""
    try:
        command.main(args=args, prog_name=prog_name, obj=obj)
    except SystemExit as end:
        if end.code is None or isinstance(end.code, int):
            return end.code or 0
        return 1  # a message as the code: an error
    return 0


def version_option(f: F) -> F:
    """``--version``: the tool's name and the toolkit's version (every tool has it)."""
    return click.version_option(package_name="tracewheel", message="%(prog)s %(version)s")(f)


class ToolGroup(_Ends, click.Group):
    """A tool with subcommands whose first one is the default: ``rollout [OPTIONS] INPUT``
    means ``rollout run [OPTIONS] INPUT``; ``rollout record ...`` names another. ``--help``
    shows the default command's help, which lists the others."""

    def __init__(self, *args: Any, default: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if (not args or args[0] not in self.commands) and args[:1] != ["--version"]:
            args = [self.default, *args]
        return super().parse_args(ctx, args)



def tool_group(name: str, default: str) -> Callable[[F], click.Group]:
    """``@click.group`` for a tool whose subcommands are ``ToolCommand`` and whose ``default``
    subcommand runs when none is named."""
    def decorate(f: F) -> click.Group:
        return click.group(name=name, cls=ToolGroup, default=default,
                           context_settings=CONTEXT_SETTINGS)(version_option(f))
    return decorate


def _tool_name(ctx: click.Context) -> str:
    """The tool's name, also for a subcommand (``rollout record`` reads the rollout section)."""
    return ctx.find_root().command.name or ""


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        names = {p.name for p in ctx.command.params if p.name}
        ctx.default_map = {**(ctx.default_map or {}),
                           **load_config_defaults(value, _tool_name(ctx), names)}
    return value


def common_options(f: F) -> F:
    """``-v``, ``-q`` and ``--config``, the options every tool has."""
    f = click.option("-v", "--verbose", count=True,
                     help="More detail on stderr; -v shows tracebacks.")(f)
    f = click.option("-q", "--quiet", is_flag=True, help="No summary line or progress bar.")(f)
    f = click.option(
        "--config", type=click.Path(exists=True, dir_okay=False), is_eager=True,
        expose_value=False, callback=_load_config,
        help="YAML file of option defaults (flags and environment win). Also reads the seed's "
             "astuner.task_reader.feedback_tracing section.",
    )(f)
    return f


def input_options(f: F) -> F:
    """``INPUT`` (a file, or - for stdin, the default) and ``--skip-invalid``."""
    f = click.option(
        "--skip-invalid", is_flag=True,
        help="Skip bad input lines (counted in the summary) instead of stopping at the first.",
    )(f)
    f = click.argument("input", type=click.File("rb", lazy=False), default="-")(f)
    return f


MAX_THREAD = 8      # requests to a model in flight at once
PARSE_RETRIES = 2   # asks again when a reply is not the JSON asked for


def ask_options(tool: str, *, requests: str = "Requests",
                unparsed: str = "the attempt counts as unparseable") -> Callable[[F], F]:
    """How a tool asks a model for JSON, the same in every tool that does (trace-filter's judge
    and rubric learning, task-augment): concurrency, parse retries, structured output, and the
    reply cache with its switch. ``check_cache_options`` refuses --cache with --no-cache."""
    def decorate(f: F) -> F:
        for option in reversed([
            click.option("--max-thread", type=click.IntRange(1), default=AskConfig.max_thread,
                         show_default=True, help=f"{requests} in flight at once."),
            click.option("--parse-retries", type=click.IntRange(0),
                         default=AskConfig.parse_retries,
                         show_default=True,
                         help=f"Asks again when a reply is not the JSON asked for; then "
                              f"{unparsed}."),
            click.option("--no-structured", is_flag=True,
                         help="Do not ask for JSON-schema output (for endpoints without it); "
                              "parse strictly."),
            click.option("--cache", "cache_path", type=click.Path(dir_okay=False),
                         help=f"Reply cache file [default: $TRACEWHEEL_CACHE/{tool}/"
                              f"cache.sqlite]."),
            click.option("--no-cache", is_flag=True,
                         help="Neither read nor write the reply cache."),
        ]):
            f = option(f)
        return f
    return decorate


def check_cache_options(cache_path: str | None, no_cache: bool) -> None:
    if cache_path and no_cache:
        raise click.UsageError("--cache and --no-cache cannot be used together")


@dataclass(kw_only=True)
class AskConfig:
    """How a tool asks a model for JSON: the fields of ``endpoint_options`` and ``ask_options``,
    the same names in every tool that asks (each tool's config extends it)."""

    # no base_url: the embedded model, served by vLLM for the run
    endpoint: Endpoint = field(default_factory=lambda: Endpoint(None, None))
    max_thread: int = MAX_THREAD       # requests in flight at once
    parse_retries: int = PARSE_RETRIES  # asks again when a reply is not the JSON asked for
    structured: bool = True            # ask for JSON-schema output
    cache: str | None = None           # the reply cache [default: in the tool's cache folder]
    use_cache: bool = True


def ask_config(options: dict[str, Any]) -> dict[str, Any]:
    """AskConfig's fields, taken out of a command's ``options`` (the flags of
    ``endpoint_options`` and ``ask_options``), after the checks that span them."""
    base_url, model = options.pop("base_url"), options.pop("model")
    if base_url and not model:
        raise click.UsageError("--model is needed with --base-url (or TRACEWHEEL_MODEL)")
    cache, no_cache = options.pop("cache_path"), options.pop("no_cache")
    check_cache_options(cache, no_cache)
    return {"endpoint": Endpoint(base_url, model, options.pop("api_key"),
                                 options.pop("timeout"), options.pop("retries")),
            "max_thread": options.pop("max_thread"),
            "parse_retries": options.pop("parse_retries"),
            "structured": not options.pop("no_structured"), "cache": cache,
            "use_cache": not no_cache}


def output_option(f: F) -> F:
    """``-o FILE``: written atomically; stdout when absent."""
    return click.option(
        "-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default=None,
        help="Write records to FILE (atomically: complete or absent) instead of stdout.",
    )(f)


def input_name(stream: IO[bytes]) -> str:
    name = getattr(stream, "name", "<stdin>")
    return "<stdin>" if name in ("-", "<stdin>", 0) else str(name)


def hint_if_waiting(stream: IO[bytes], tool: str) -> None:
    """One line on stderr when the tool sits waiting for a human to type JSONL."""
    if input_name(stream) == "<stdin>" and sys.stdin.isatty():
        click.echo(f"{tool}: reading JSONL from stdin (Ctrl-D to end, --help for usage)", err=True)


def read_input(
    stream: IO[bytes],
    kind: str | None,
    *,
    skip_invalid: bool,
    stats: ReadStats,
    tool: str,
    verbose: int = 0,
    also: Callable[[dict], None] | None = None,
) -> Iterator[dict]:
    """The records of a tool's input, validated as ``kind`` (task, rollout, sample) records;
    ``also(record)`` is a tool's own check, raising RecordError (named with file and line)."""
    from .records import VALIDATORS  # pydantic: imported only by tools that validate records

    hint_if_waiting(stream, tool)
    validate = VALIDATORS[kind] if kind else None
    if also is not None:
        validate = _both(validate, also)
    warn = (lambda msg: click.echo(f"{tool}: {msg}", err=True)) if verbose else None
    return read_jsonl(stream, input_name(stream), validate=validate, skip_invalid=skip_invalid,
                      stats=stats, warn=warn)


def _both(validate: Callable[[dict], dict] | None,
          also: Callable[[dict], None]) -> Callable[[dict], dict]:
    def check(record: dict) -> dict:
        record = validate(record) if validate is not None else record
        also(record)
        return record

    return check


class Summary:
    """The closing line on stderr: ``412 read, 377 kept, 35 dropped, 0 invalid in 3.1 s``.

    Counts are printed in the order first touched; ``invalid`` reasons are spelled out.
    """

    def __init__(self, tool: str, *keys: str):
        self.tool = tool
        self.counts: Counter = Counter({k: 0 for k in keys})
        self.reasons: dict[str, Counter] = {}
        self.extra: list[str] = []
        self.started = time.monotonic()

    def add(self, key: str, n: int = 1, reason: str | None = None) -> None:
        self.counts[key] += n
        if reason:
            self.reasons.setdefault(key, Counter())[reason] += n

    def absorb(self, stats: ReadStats) -> None:
        """Take a reader's invalid-line counts into the summary."""
        self.counts["invalid"] += stats.invalid
        for reason, n in stats.reasons.items():
            self.reasons.setdefault("invalid", Counter())[reason] += n

    def line(self) -> str:
        parts = []
        for key, n in self.counts.items():
            text = f"{n} {key}"
            if self.reasons.get(key):
                why = self.reasons[key].most_common()
                text += " (" + ", ".join(f"{c} {r}" for r, c in why) + ")"
            parts.append(text)
        parts.extend(self.extra)
        return f"{self.tool}: " + ", ".join(parts) + f" in {time.monotonic() - self.started:.1f} s"

    def print(self, quiet: bool = False) -> None:
        """Print the line; called in a ``finally``, it also says how the run ended early, so
        that counts of a run cut short do not read as a whole run's."""
        if quiet:
            return
        ended = stopped_by(sys.exc_info()[1])
        if ended:
            self.extra.append(ended)
        with contextlib.suppress(OSError):  # stderr closed too: nothing to tell
            click.echo(self.line(), err=True)


def stopped_by(err: BaseException | None) -> str | None:
    """How a run that raised ``err`` ended, for the summary: "stopped at line N" (bad input),
    "output closed" (a reader such as ``head`` went away), "interrupted", "stopped by an
    error" (the error follows on its own line); None for a run that ended well."""
    if err is None or isinstance(err, (SystemExit, GeneratorExit)):
        return None
    if isinstance(err, DataError):
        return f"stopped at line {err.line}" if err.line is not None else "stopped by bad input"
    if isinstance(err, BrokenPipeError):
        return "output closed"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return "stopped by an error"


PROGRESS_SECONDS = 30.0  # how often a log gets a progress line ($TRACEWHEEL_PROGRESS_SECONDS)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class ProgressLog:
    """Progress for logs (stderr not a terminal): a line at a steady interval, from a thread of
    its own, so that a long step still shows the run is alive, e.g.
    ``train: step 3 of 17 (18%), 412 tokens/s, elapsed 2m10s, ETA 9m52s``."""

    def __init__(self, desc: str, *, total: int | None = None, unit: str = "rec",
                 interval: float | None = None):
        self.desc, self.total, self.unit = desc, total, unit
        self.interval = interval or float(os.environ.get("TRACEWHEEL_PROGRESS_SECONDS")
                                          or PROGRESS_SECONDS)
        self.done = 0
        self.figures: dict[str, str] = {}
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()

    def update(self, n: int = 1, **figures: str) -> None:
        self.done += n
        self.figures.update(figures)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        if self.total:
            text = f"{self.unit} {self.done} of {self.total} ({self.done / self.total:.0%})"
        else:
            text = f"{self.done} {self.unit}s"
        parts = [text, *self.figures.values(), f"elapsed {_duration(elapsed)}"]
        if self.total and self.done:
            parts.append(f"ETA {_duration(elapsed / self.done * (self.total - self.done))}")
        return f"{self.desc}: " + ", ".join(parts)

    def _run(self) -> None:
        # Signals to the process must reach the main thread, which cleans up: a signal taken by
        # this thread would leave the main thread blocked in a read, unaware, until its input
        # ends and its output is complete.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        while not self._stop.wait(self.interval):
            click.echo(self.line(), err=True)

    def close(self) -> None:
        self._stop.set()


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "",
             quiet: bool = False, unit: str = "rec") -> Iterable[T]:
    """A progress bar on stderr when stderr is a terminal; else a progress line in the log at
    a steady interval (ProgressLog). The items are unchanged."""
    if quiet:
        return items
    if not sys.stderr.isatty():
        return _logged(items, ProgressLog(desc, total=total, unit=unit))
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)


def _logged(items: Iterable[T], log: ProgressLog) -> Iterator[T]:
    try:
        for item in items:
            yield item
            log.update()
    finally:
        log.close()
