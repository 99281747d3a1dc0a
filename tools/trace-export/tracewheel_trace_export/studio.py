"""Reading a Studio database safely: read-only, with a busy timeout, in short read transactions
over one snapshot (what was there when the export began), never writing. Spans come out grouped
by run, a batch of runs at a time, so memory stays bounded by the largest batch, not the
database."""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tracewheel.errors import TracewheelError
from tracewheel.jsonl import loads

from .spans import CorruptAttributes, Span, legacy_span, otel_span
from .turns import Run


@dataclass(frozen=True)
class StudioVersion:
    """The span_table of one Studio version, an entry of ``STUDIO_VERSIONS``: a new Studio
    schema is its span function (spans.py) and one entry."""

    version: str                 # the Studio version whose schema this is
    marks: frozenset[str]        # span_table columns that tell it from the others
    run_column: str              # the span column naming the run
    order_column: str            # the span column to order by time
    span: Callable[[dict], Span]  # a row (column -> value) as a Span
    # A run with no row in run_table: how to name it (default: its id alone).
    run_of: Callable[[sqlite3.Connection, str], Run] | None = None


@dataclass
class Schema:
    """What an export found in a database: its Studio version, and what it has of it."""

    studio: StudioVersion
    has_run_table: bool
    columns: list[str]     # the span columns read (events, links, ... are not)


_WANTED = ["id", "spanId", "traceId", "parentSpanId", "name", "spanKind", "operationName",
           "attributes", "startTime", "endTime", "startTimeUnixNano", "endTimeUnixNano",
           "status", "statusMessage", "statusCode", "run_id", "conversationId", "model",
           "serviceName"]


class StudioConnection(sqlite3.Connection):
    """A read-only connection that knows its URI (to attach the file again read-only) and, when
    the file was opened as immutable, how it looked then (to notice a write after all)."""

    uri: str = ""
    unchanged: tuple[int, int] | None = None

    def check_unchanged(self, path: str) -> None:
        """After an immutable read: the file must be as it was, or the read may be torn."""
        if self.unchanged is not None and _signature(Path(path)) != self.unchanged:
            raise TracewheelError(f"{path}: the database was written while it was read (Studio "
                                f"started?); nothing was written: run again")


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _idle_wal(path: Path) -> bool:
    """A WAL-mode database that no one has open: no -wal or -shm file beside it. A read-only
    connection would create both, and could not remove them (nor checkpoint) when it closes."""
    with open(path, "rb") as f:
        header = f.read(100)
    # Bytes 18 and 19 of an SQLite header are the file format's write and read versions: 2, WAL.
    wal = header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"
    return wal and not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()


def open_readonly(path: str, timeout: float) -> StudioConnection:
    """A read-only connection; clear errors for a missing file or one that is not SQLite. It
    leaves the user's folder as it was: an idle WAL-mode database is read as immutable (no
    -wal/-shm files made), and ``check_unchanged`` tells whether it stayed so."""
    p = Path(path)
    if not p.exists():
        raise TracewheelError(f"{path}: no such file")
    if p.is_dir():
        raise TracewheelError(f"{path}: is a directory, not a Studio database")
    uri = f"file:{quote(str(p.resolve()))}?mode=ro"
    before = None
    if _idle_wal(p):
        uri += "&immutable=1"
        before = _signature(p)
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                           factory=StudioConnection)
    conn.uri, conn.unchanged = uri, before
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as err:
        conn.close()
        if "locked" in str(err) or "busy" in str(err):
            raise TracewheelError(f"{path}: database is locked (waited {timeout:g} s; "
                                f"raise --timeout)") from None
        raise TracewheelError(f"{path}: not an SQLite database ({err})") from None
    return conn


def detect_schema(conn: sqlite3.Connection, path: str) -> Schema:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "span_table" not in tables:
        found = ", ".join(sorted(tables)) or "none"
        raise TracewheelError(f"{path}: not an AgentScope Studio database "
                            f"(no span_table; tables found: {found})")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(span_table)")}
    has_runs = "run_table" in tables
    read = [c for c in _WANTED if c in columns]
    for studio in STUDIO_VERSIONS:
        if studio.marks <= columns:
            return Schema(studio, has_runs, read)
    raise TracewheelError(f"{path}: span_table has an unknown layout "
                        f"(columns: {', '.join(sorted(columns))})")


def load_runs(conn: sqlite3.Connection, schema: Schema) -> dict[str, Run]:
    if not schema.has_run_table:
        return {}
    return {r["id"]: Run(r["id"], r["project"], r["name"], r["status"], r["timestamp"])
            for r in conn.execute("SELECT id, project, name, status, timestamp FROM run_table")}


@contextlib.contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One short read transaction. While it is open, a rollback-journal database (Studio's
    default) cannot commit a write: Studio would wait, or fail, so keep each one brief."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def iter_runs(
    conn: sqlite3.Connection,
    schema: Schema,
    *,
    on_corrupt: Callable[[str, str], None],
    on_orphans: Callable[[int], None] = lambda n: None,
    batch: int = 64,
) -> Iterator[tuple[Run, list[Span]]]:
    """Each run with its spans, in run-id order, read as of the moment the export began.

    Runs are read ``batch`` at a time, each batch in its own short read transaction, so Studio
    can go on writing between them; spans that arrive after the start (a higher rowid) are left
    for the next export, so the export is one snapshot however long it runs. A span with
    corrupt JSON is reported through ``on_corrupt(span_id, problem)`` and left out; spans with
    no run id are counted through ``on_orphans``.
    """
    run_col = schema.studio.run_column
    with read_transaction(conn):
        runs = load_runs(conn, schema)
        bound = conn.execute("SELECT max(rowid) FROM span_table").fetchone()[0] or 0
        orphans = conn.execute(f"SELECT count(*) FROM span_table WHERE {run_col} IS NULL "
                               f"OR {run_col} = ''").fetchone()[0]
        indexed = _has_index(conn, "span_table", run_col)
    if orphans:
        on_orphans(orphans)
    with contextlib.ExitStack() as stack:
        if indexed:
            reader, ids_sql, rows_where = conn, (
                f"SELECT DISTINCT {run_col} FROM span_table WHERE {run_col} > ? "
                f"ORDER BY {run_col} LIMIT ?"), f"{run_col} IN ({{marks}}) AND rowid <= ?"
        else:
            # Studio 1.0.5 has no index on span_table.run_id: each batch would scan the whole
            # table. One pass copies (run, rowid) into an indexed table of a temporary
            # database; batches then find their spans by rowid. The user's file is only read.
            reader = stack.enter_context(_run_index(conn, run_col, bound))
            ids_sql = "SELECT DISTINCT run FROM spans WHERE run > ? ORDER BY run LIMIT ?"
            rows_where = "rowid IN (SELECT r FROM spans WHERE run IN ({marks})) AND rowid <= ?"
        yield from _batches(reader, conn, schema, runs, bound, batch, ids_sql, rows_where,
                            on_corrupt)


def _batches(reader: sqlite3.Connection, conn: sqlite3.Connection, schema: Schema,
             runs: dict[str, Run], bound: int, batch: int, ids_sql: str, rows_where: str,
             on_corrupt: Callable[[str, str], None]) -> Iterator[tuple[Run, list[Span]]]:
    run_col, columns, make = schema.studio.run_column, schema.columns, schema.studio.span
    run_of = schema.studio.run_of or (lambda conn, run_id: Run(run_id, None, None))
    table = "span_table" if reader is conn else "studio.span_table"
    cursor = reader.cursor()
    cursor.row_factory = None  # plain tuples: cheaper than sqlite3.Row for millions of rows
    run_index = columns.index(run_col)
    after = ""
    while True:
        with read_transaction(reader):
            ids = [r[0] for r in cursor.execute(ids_sql, (after, batch))]
            if not ids:
                return
            where = rows_where.format(marks=", ".join("?" * len(ids)))
            rows = cursor.execute(
                f"SELECT {', '.join(columns)} FROM {table} WHERE {where} "
                f"ORDER BY {run_col}, {schema.studio.order_column}", (*ids, bound)).fetchall()
        with read_transaction(conn):
            found = {run_id: runs.get(run_id) or run_of(conn, run_id)
                     for run_id in dict.fromkeys(r[run_index] for r in rows)}
        after = ids[-1]
        for run_id, group in itertools.groupby(rows, key=lambda r: r[run_index]):
            spans = []
            for values in group:
                row = dict(zip(columns, values, strict=True))
                try:
                    spans.append(make(row))
                except (CorruptAttributes, ValueError, KeyError, TypeError) as err:
                    on_corrupt(row["id"], str(err))
            yield found[run_id], spans


def _has_index(conn: sqlite3.Connection, table: str, column: str) -> bool:
    """Whether an index of ``table`` starts with ``column`` (a lookup by it is then cheap)."""
    for index in conn.execute(f"PRAGMA index_list({table})").fetchall():
        first = conn.execute(f"PRAGMA index_info({index[1]!r})").fetchone()
        if first is not None and first[2] == column:
            return True
    return False


@contextlib.contextmanager
def _run_index(conn: StudioConnection, run_col: str, bound: int
               ) -> Iterator[sqlite3.Connection]:
    """A connection to a temporary database with ``spans(run, r)``: each span's run and rowid,
    indexed by run; the Studio database is attached to it read-only as ``studio``.

    It is SQLite's private temporary database (an empty file name): on disk under the
    temporary folder, but unlinked as soon as it is opened, so not even SIGKILL leaves it
    behind (it grows with the database: 2.9 MB for 4,200 runs)."""
    index = sqlite3.connect("", isolation_level=None)
    try:
        index.execute("PRAGMA journal_mode = OFF")
        index.execute("PRAGMA synchronous = OFF")
        index.execute("ATTACH DATABASE ? AS studio", (conn.uri,))
        index.execute(f"CREATE TABLE main.spans AS SELECT {run_col} AS run, rowid AS r "
                      f"FROM studio.span_table WHERE rowid <= ?", (bound,))
        index.execute("CREATE INDEX main.spans_run ON spans(run, r)")
        yield index
    finally:
        index.close()


def _run_from_resource(conn: sqlite3.Connection, run_id: str) -> Run:
    """AgentScope 2.x registers no run: the project is the service name, the run name the
    resource attribute deployment.environment. Read from one span of the run, not every row
    (the resource column is large and the same on every span)."""
    row = conn.execute(
        "SELECT serviceName, resource FROM span_table WHERE conversationId = ? "
        "ORDER BY startTimeUnixNano LIMIT 1", (run_id,)).fetchone()
    service, resource = (row[0], row[1]) if row else (None, None)
    try:
        attrs = (loads(resource) or {}).get("attributes", {}) if resource else {}
    except json.JSONDecodeError:
        attrs = {}
    project = service or (attrs.get("service") or {}).get("name")
    return Run(run_id, project, (attrs.get("deployment") or {}).get("environment"))


# Tried in order; the first whose marks the span_table has is the database's version.
STUDIO_VERSIONS = (
    StudioVersion("1.0.5", frozenset({"spanKind", "run_id", "startTime"}), "run_id",
                  "startTime", legacy_span),
    StudioVersion("1.0.9", frozenset({"conversationId", "spanId", "startTimeUnixNano"}),
                  "conversationId", "startTimeUnixNano", otel_span, run_of=_run_from_resource),
)
