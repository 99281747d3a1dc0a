"""Stable ids: the same parts give the same id on every run and machine (caches, dedup and
resumption rely on it). Kept apart from ``records`` so tools that need only ids skip pydantic."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_id(*parts: Any, prefix: str = "") -> str:
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return prefix + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
