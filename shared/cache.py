"""A persistent key-value cache in one SQLite file, for results that cost an LLM call (verdicts,
generated tasks). Keys are content hashes; values are JSON. Safe for several processes (WAL,
busy timeout); use it from one thread per process (the tools call it from their main thread)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from .ids import stable_id
from .jsonl import dumps, loads
from .models import cache_dir


def default_cache_path(tool: str) -> Path:
    """``$FLYWHEEL_CACHE/<tool>/cache.sqlite`` unless the tool is given a path."""
    return cache_dir() / tool / "cache.sqlite"


def cache_key(*parts: Any) -> str:
    """A key for ``parts`` (any JSON data): same parts, same key."""
    return stable_id(*parts)


class Cache:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        row = self._conn.execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return loads(row[0])

    def put(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO cache (key, value) VALUES (?, ?)",
                           (key, dumps(value)))

    def __len__(self) -> int:
        return self._conn.execute("SELECT count(*) FROM cache").fetchone()[0]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
