"""Python ``repr()`` text of AgentScope objects (``Msg(...)``, ``ToolResponse(...)``) back to data.

Studio stores agent messages inside span attributes as ``repr()`` text. This parses that text with
Python's own parser (``ast.parse``) and converts only literal nodes and calls of known names:
nothing in it is ever evaluated, so a hostile string stays a string.
"""

from __future__ import annotations

import ast
from typing import Any

# Constructors whose keyword arguments become a dict (the name is kept under "__type__").
KNOWN_CALLS = {"Msg", "ToolResponse", "TextBlock", "ToolUseBlock", "ToolResultBlock",
               "ThinkingBlock", "ImageBlock", "AudioBlock", "VideoBlock", "CompletionUsage",
               "ChatUsage", "ChatResponse"}


class ReprError(ValueError):
    """Text that is not the repr of data we understand."""


def _convert(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List):
        return [_convert(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return [_convert(e) for e in node.elts]
    if isinstance(node, ast.Set):
        return [_convert(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ReprError("dict unpacking is not data")
        return {_convert(k): _convert(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _convert(node.operand)
        if not isinstance(value, (int, float, complex)):
            raise ReprError("sign on a non-number")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id not in KNOWN_CALLS or node.args:
            raise ReprError(f"unknown constructor {node.func.id}(...)")
        out = {"__type__": node.func.id}
        for kw in node.keywords:
            if kw.arg is None:
                raise ReprError("**kwargs is not data")
            out[kw.arg] = _convert(kw.value)
        return out
    raise ReprError(f"not data: {type(node).__name__}")


def parse_repr(text: str) -> Any:
    """The data a ``repr()`` text describes; ReprError if it is anything else."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise ReprError(f"not a Python repr: {err}") from None
    try:
        return _convert(tree.body)
    except RecursionError:
        raise ReprError("nested too deeply") from None


def parse_msg(value: Any) -> dict | None:
    """A Msg given as repr text or as a dict, as a dict with name/role/content; None if absent."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        data = parse_repr(value)
        if isinstance(data, dict) and data.get("__type__") == "Msg":
            return data
        raise ReprError("not a Msg(...)")
    raise ReprError(f"not a Msg: {type(value).__name__}")
