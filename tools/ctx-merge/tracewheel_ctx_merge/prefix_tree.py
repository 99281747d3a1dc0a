"""A radix tree over token sequences: which earlier call's context does a new prompt extend?

Each stored sequence is a call's context (its prompt ids followed by its completion ids). A
lookup walks the new prompt down the tree once, so finding the parent of every call of a
timeline costs time linear in the tokens, never a comparison of every pair of calls. Edges are
compared as list slices (C speed); a token-by-token loop runs only where two sequences part.
"""

from __future__ import annotations

from dataclasses import dataclass


class _Node:
    # The edge into this node is edge[start:end], a view on the list that first stored it
    # (no copy). `call` is the call whose context ends exactly here; `last` the latest call
    # whose context passes through or ends here.
    __slots__ = ("edge", "start", "end", "children", "call", "last")

    def __init__(self, edge: list[int], start: int, end: int):
        self.edge = edge
        self.start = start
        self.end = end
        self.children: dict[int, _Node] = {}
        self.call: int | None = None
        self.last: int | None = None


@dataclass(frozen=True)
class Match:
    """What a prompt has in common with the stored contexts.

    ``exact``: the call whose whole context is the longest prefix of the prompt (None if no
    stored context is a prefix), and ``exact_len`` the length of that context.
    ``near``: the latest call whose context shares the longest common prefix with the prompt,
    and ``common`` the length of that prefix (``near == exact`` when the prompt goes on past
    the exact parent without meeting anything else).
    """

    exact: int | None
    exact_len: int
    near: int | None
    common: int


def common_prefix(a: list[int], i: int, b: list[int], j: int, n: int, block: int = 64) -> int:
    """Length of the common prefix of a[i:i+n] and b[j:j+n]: whole blocks compared as slices,
    then at most one block token by token (linear, and at C speed for long prefixes)."""
    k = 0
    while k + block <= n and a[i + k:i + k + block] == b[j + k:j + k + block]:
        k += block
    while k < n and a[i + k] == b[j + k]:
        k += 1
    return k


class PrefixTree:
    """Contexts of the calls of one timeline, shared prefixes stored once."""

    def __init__(self) -> None:
        self.root = _Node([], 0, 0)

    def match(self, tokens: list[int]) -> Match:
        node, pos, n = self.root, 0, len(tokens)
        exact, exact_len = None, 0
        while True:
            if node.call is not None:
                exact, exact_len = node.call, pos
            if pos == n:
                return Match(exact, exact_len, node.last, pos)
            child = node.children.get(tokens[pos])
            if child is None:
                return Match(exact, exact_len, node.last, pos)
            size = child.end - child.start
            if size <= n - pos and tokens[pos:pos + size] == child.edge[child.start:child.end]:
                node, pos = child, pos + size
                continue
            k = common_prefix(tokens, pos, child.edge, child.start, min(size, n - pos))
            return Match(exact, exact_len, child.last, pos + k)

    def insert(self, tokens: list[int], call: int) -> None:
        """Store ``tokens`` as the context of ``call`` (a later call with the same context
        replaces it as the one that ends there: the latest is the natural parent)."""
        node, pos, n = self.root, 0, len(tokens)
        while True:
            node.last = call
            if pos == n:
                node.call = call
                return
            child = node.children.get(tokens[pos])
            if child is None:
                leaf = _Node(tokens, pos, n)
                leaf.call = leaf.last = call
                node.children[tokens[pos]] = leaf
                return
            size = child.end - child.start
            if size <= n - pos and tokens[pos:pos + size] == child.edge[child.start:child.end]:
                node, pos = child, pos + size
                continue
            # The new context parts from this edge after k tokens: split the edge there.
            k = common_prefix(tokens, pos, child.edge, child.start, min(size, n - pos))
            middle = _Node(child.edge, child.start, child.start + k)
            middle.last = child.last
            child.start += k
            middle.children[child.edge[child.start]] = child
            node.children[tokens[pos]] = middle
            node, pos = middle, pos + k
