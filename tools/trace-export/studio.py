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

from flywheel.errors import FlywheelError
from flywheel.jsonl import loads

from .spans import CorruptAttributes, Span, legacy_span, otel_span
from .turns import Run

LEGACY, OTEL = "1.0.5", "1.0.9"


@dataclass
class Schema:
    version: str           # Studio schema: 1.0.5 (legacy spans) or 1.0.9 (OpenTelemetry)
    run_column: str        # the span column naming the run
    order_column: str      # the span column to order by time
    has_run_table: bool
    columns: list[str]     # the span columns read (events, links, ... are not)


_WANTED = ["id", "spanId", "traceId", "parentSpanId", "name", "spanKind", "operationName",
           "attributes", "startTime", "endTime", "startTimeUnixNano", "endTimeUnixNano",
           "status", "statusMessage", "statusCode", "run_id", "conversationId", "model",
           "serviceName"]


def open_readonly(path: str, timeout: float) -> sqlite3.Connection:
    """A read-only connection; clear errors for a missing file or one that is not SQLite."""
    p = Path(path)
    if not p.exists():
        raise FlywheelError(f"{path}: no such file")
    if p.is_dir():
        raise FlywheelError(f"{path}: is a directory, not a Studio database")
    uri = f"file:{quote(str(p.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as err:
        conn.close()
        if "locked" in str(err) or "busy" in str(err):
            raise FlywheelError(f"{path}: database is locked (waited {timeout:g} s; "
                                f"raise --timeout)") from None
        raise FlywheelError(f"{path}: not an SQLite database ({err})") from None
    return conn


def detect_schema(conn: sqlite3.Connection, path: str) -> Schema:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "span_table" not in tables:
        found = ", ".join(sorted(tables)) or "none"
        raise FlywheelError(f"{path}: not an AgentScope Studio database "
                            f"(no span_table; tables found: {found})")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(span_table)")}
    has_runs = "run_table" in tables
    read = [c for c in _WANTED if c in columns]
    if {"spanKind", "run_id", "startTime"} <= columns:
        return Schema(LEGACY, "run_id", "startTime", has_runs, read)
    if {"conversationId", "spanId", "startTimeUnixNano"} <= columns:
        return Schema(OTEL, "conversationId", "startTimeUnixNano", has_runs, read)
    raise FlywheelError(f"{path}: span_table has an unknown layout "
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
    make = legacy_span if schema.version == LEGACY else otel_span
    run_col, columns = schema.run_column, schema.columns
    with read_transaction(conn):
        runs = load_runs(conn, schema)
        bound = conn.execute("SELECT max(rowid) FROM span_table").fetchone()[0] or 0
        orphans = conn.execute(f"SELECT count(*) FROM span_table WHERE {run_col} IS NULL "
                               f"OR {run_col} = ''").fetchone()[0]
    if orphans:
        on_orphans(orphans)
    cursor = conn.cursor()
    cursor.row_factory = None  # plain tuples: cheaper than sqlite3.Row for millions of rows
    run_index = columns.index(run_col)
    after = ""
    while True:
        with read_transaction(conn):
            ids = [r[0] for r in cursor.execute(
                f"SELECT DISTINCT {run_col} FROM span_table WHERE {run_col} > ? "
                f"ORDER BY {run_col} LIMIT ?", (after, batch))]
            if not ids:
                return
            rows = cursor.execute(
                f"SELECT {', '.join(columns)} FROM span_table "
                f"WHERE {run_col} IN ({', '.join('?' * len(ids))}) AND rowid <= ? "
                f"ORDER BY {run_col}, {schema.order_column}", (*ids, bound)).fetchall()
            found = {run_id: runs.get(run_id) or _run_from_resource(conn, schema, run_id)
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


def _run_from_resource(conn: sqlite3.Connection, schema: Schema, run_id: str) -> Run:
    """AgentScope 2.x registers no run: the project is the service name, the run name the
    resource attribute deployment.environment. Read from one span of the run, not every row
    (the resource column is large and the same on every span)."""
    if schema.version != OTEL:
        return Run(run_id, None, None)
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
