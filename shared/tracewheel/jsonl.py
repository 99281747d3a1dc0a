"""JSONL in and out: a lazy reader that names the file and line of every bad record, and a
writer that streams to stdout or writes a file atomically (temporary file, then rename)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from .errors import DataError, RecordError, TracewheelError

SKIP_HINT = "use --skip-invalid to skip bad lines"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@dataclass
class ReadStats:
    """What a reader saw: every non-blank line is either yielded or counted as invalid."""

    records: int = 0
    invalid: int = 0
    reasons: Counter = field(default_factory=Counter)


def _problem(line: bytes, validate: Callable[[dict], dict] | None) -> tuple[dict | None, str, str]:
    """Parse one line: (record, "", "") or (None, reason kind, message)."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, "not UTF-8", f"not valid UTF-8 at byte {err.start}"
    try:
        obj = loads(line)
    except json.JSONDecodeError as err:
        return None, "bad JSON", f"invalid JSON: {err.msg.split(':')[0]} at column {err.colno}"
    if not isinstance(obj, dict):
        return None, "not an object", f"expected a JSON object, got {type(obj).__name__}"
    if validate is not None:
        try:
            obj = validate(obj)
        except RecordError as err:
            return None, "bad record", str(err)
    return obj, "", ""


def read_jsonl(
    stream: IO[bytes] | IO[str],
    name: str | None = None,
    *,
    validate: Callable[[dict], dict] | None = None,
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
    warn: Callable[[str], None] | None = None,
    hint: str | None = SKIP_HINT,
) -> Iterator[dict]:
    """Yield the JSON object on each non-blank line, lazily.

    A bad line raises DataError naming the file and line, with ``hint`` (how to skip such
    lines, for a file whose tool has --skip-invalid; None for one it has not), unless
    ``skip_invalid``: then it is counted in ``stats`` (and reported through ``warn``) and
    reading goes on.
    """
    name = name or getattr(stream, "name", "<stdin>")
    stats = stats if stats is not None else ReadStats()
    for lineno, line in enumerate(stream, start=1):
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        if not line.strip():
            continue
        record, kind, message = _problem(line, validate)
        if record is not None:
            stats.records += 1
            yield record
            continue
        if not skip_invalid:
            raise DataError(name, lineno, message, hint)
        stats.invalid += 1
        stats.reasons[kind] += 1
        if warn is not None:
            warn(f"{name}:{lineno}: skipped: {message}")


def loads(data: bytes | str) -> Any:
    """JSON text to data (orjson: several times faster than the standard library; its errors
    are json.JSONDecodeError with a line and column)."""
    return orjson.loads(data)


def dumps_bytes(record: Any) -> bytes:
    """One record as one line of UTF-8 JSON, without the newline."""
    try:
        return orjson.dumps(record)
    except TypeError:  # what orjson refuses (int keys, huge ints) the standard library writes
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def dumps(record: Any) -> str:
    """One record as one line of JSON (UTF-8 kept as is, no spaces wasted)."""
    return dumps_bytes(record).decode("utf-8")


class JsonlWriter:
    """Writes one record per line; counts them. Flushes each record when streaming to a pipe."""

    def __init__(self, stream: IO[bytes], *, flush_each: bool):
        self._stream = stream
        self._flush_each = flush_each
        self.count = 0

    def write(self, record: Any) -> None:
        self._stream.write(dumps_bytes(record) + b"\n")
        if self._flush_each:
            self._stream.flush()
        self.count += 1


@contextlib.contextmanager
def open_output(path: str | os.PathLike | None,
                stdout: IO[bytes] | None = None) -> Iterator[JsonlWriter]:
    """A JSONL writer on stdout (``None`` or ``-``) or on ``path``, written atomically.

    The file appears under its final name only when the block ends without an exception, so a
    crash never leaves half a file where a finished one is expected. ``stdout`` replaces
    ``sys.stdout`` (see ``records_stdout``).
    """
    if path is None or str(path) == "-":
        stream = stdout or sys.stdout.buffer
        yield JsonlWriter(stream, flush_each=True)
        stream.flush()
        return
    if os.path.exists(path) and not os.path.isfile(path):
        # /dev/null, a FIFO: write into it; renaming over it would replace the device itself.
        with open(path, "wb") as stream:
            yield JsonlWriter(stream, flush_each=True)
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        yield JsonlWriter(stream, flush_each=False)


def _remove_leftovers(final: Path) -> None:
    """Temporary files of earlier writes of ``final`` whose process is gone (killed with
    SIGKILL, or the machine stopped): their names carry the writer's process id."""
    for leftover in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        pid = leftover.name[len(final.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` that is renamed to it when the block succeeds; it is
    removed when the block fails, and by the next write of ``path`` when its process died."""
    final = Path(path)
    if not final.parent.is_dir():  # a typo in -o is not a reason to make directories
        raise TracewheelError(f"{path}: no such directory {final.parent} (make it first)")
    _remove_leftovers(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp",
                               dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a finished file gets the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def records_stdout() -> Iterator[IO[bytes]]:
    """The real stdout, kept for records, while file descriptor 1 and ``sys.stdout`` point at
    stderr: code the tool runs (a user's workflow, an agent printing its messages, a library,
    a child process) cannot write into the JSONL stream. Under a test runner whose stdout is
    not a file, the stream is just ``sys.stdout``'s."""
    try:
        fd = sys.stdout.fileno()
        err_fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        yield sys.stdout.buffer
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    records = os.fdopen(os.dup(saved), "wb")
    os.dup2(err_fd, fd)
    previous, sys.stdout = sys.stdout, sys.stderr
    try:
        yield records
    finally:
        sys.stdout = previous
        os.dup2(saved, fd)
        os.close(saved)
        with contextlib.suppress(BrokenPipeError, OSError):
            records.close()
