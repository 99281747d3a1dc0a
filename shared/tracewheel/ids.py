"""Stable ids: the same parts give the same id on every run and machine (caches, dedup and
resumption rely on it). Kept apart from ``records`` so tools that need only ids skip pydantic."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson


def _canonical(parts: Any) -> bytes:
    # Compact, sorted keys, UTF-8 as is: the bytes json.dumps writes with those settings (but
    # for exponents of floats), several times faster. What orjson refuses (non-string keys,
    # ints past 64 bits) takes the standard library's way: the same parts still give one id.
    try:
        return orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(parts, ensure_ascii=False, sort_keys=True,
                          separators=(",", ":")).encode("utf-8")


def stable_id(*parts: Any, prefix: str = "") -> str:
    return prefix + hashlib.sha256(_canonical(parts)).hexdigest()[:16]
