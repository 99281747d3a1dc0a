"""A persistent key-value cache in one SQLite file, for results that cost an LLM call (verdicts,
generated tasks). Keys are content hashes; values are JSON. Safe for several processes (WAL,
busy timeout); use it from one thread per process (the tools call it from their main thread)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, TypeVar

from .ids import stable_id
from .jsonl import dumps, loads
from .models import cache_dir


def default_cache_path(tool: str) -> Path:
    """``$TRACEWHEEL_CACHE/<tool>/cache.sqlite`` unless the tool is given a path."""
    return cache_dir() / tool / "cache.sqlite"


def cache_key(*parts: Any) -> str:
    """A key for ``parts`` (any JSON data): same parts, same key."""
    return stable_id(*parts)


S = TypeVar("S", bound="Store")


class Store:
    """One table in a SQLite file several processes may use at once (WAL, a busy timeout, each
    statement committed), through sqlite-utils: the cache, and task-augment's history."""

    def __init__(self, path: str | os.PathLike, table: str, columns: dict[str, type], *,
                 pk: str, not_null: set[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        import sqlite_utils  # imports pandas where installed: lazily, not at start-up

        self.db = sqlite_utils.Database(sqlite3.connect(self.path, timeout=30,
                                                        isolation_level=None))
        self.db.enable_wal()
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.table = self.db.table(table)
        self.table.create(columns, pk=pk, not_null=not_null, if_not_exists=True)

    def __len__(self) -> int:
        return self.table.count

    def close(self) -> None:
        self.db.close()

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Cache(Store):
    def __init__(self, path: str | os.PathLike):
        super().__init__(path, "cache", {"key": str, "value": str}, pk="key",
                         not_null={"value"})
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        from sqlite_utils.db import NotFoundError

        try:
            row = self.table.get(key)
        except NotFoundError:
            self.misses += 1
            return None
        self.hits += 1
        return loads(row["value"])

    def put(self, key: str, value: Any) -> None:
        self.table.insert({"key": key, "value": dumps(value)}, replace=True)
