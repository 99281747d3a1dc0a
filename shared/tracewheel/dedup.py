"""Duplicate detection for task texts: exact after normalisation, and near-duplicate by MinHash
LSH over character shingles (works for CJK text too, which has no spaces between words)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # datasketch imports scipy: 0.5 s of every tool's start-up, --help too
    from datasketch import MinHash

_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """Case, width, accents of form, punctuation and spacing do not make a task new."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _PUNCT.sub(" ", text).strip()


def shingles(text: str, k: int = 5) -> set[bytes]:
    compact = normalize_text(text).replace(" ", "")
    if len(compact) <= k:
        return {compact.encode("utf-8")}
    return {compact[i:i + k].encode("utf-8") for i in range(len(compact) - k + 1)}


class Deduper:
    """Remembers texts; ``check(key, text)`` says which earlier key ``text`` duplicates, if any."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 256, near: bool = True):
        if not 0 < threshold <= 1:
            raise ValueError("the similarity threshold must be in (0, 1]")
        self.threshold = threshold
        self.num_perm = num_perm
        self.near = near and threshold < 1
        self._exact: dict[str, str] = {}
        if self.near:
            from datasketch import MinHashLSH

            self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        else:
            self._lsh = None
        self._hashes: dict[str, MinHash] = {}

    def _minhash(self, text: str) -> MinHash:
        from datasketch import MinHash

        mh = MinHash(num_perm=self.num_perm)
        mh.update_batch(list(shingles(text)))
        return mh

    def check(self, key: str, text: str) -> tuple[str, str] | None:
        """``(kind, earlier key)`` if ``text`` duplicates an earlier one, else None (and then
        ``text`` is remembered under ``key``)."""
        digest = hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()
        if digest in self._exact:
            return "exact", self._exact[digest]
        mh = None
        if self._lsh is not None:
            mh = self._minhash(text)
            for other in self._lsh.query(mh):
                if mh.jaccard(self._hashes[other]) >= self.threshold:
                    return "near", other
        self._exact[digest] = key
        if self._lsh is not None and mh is not None and key not in self._hashes:
            self._lsh.insert(key, mh)
            self._hashes[key] = mh
        return None
