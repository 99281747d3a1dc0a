"""Which install extra brings a missing package: `pip install tracewheel` is the light core
(trace-export, trace-filter, task-augment, ctx-merge's token mode); `[rollout]`, `[train]`,
`[ray]` and `[all]` add the rest. A tool that meets a missing package says which extra to
install, in one line."""

from __future__ import annotations

PACKAGE = "tracewheel"
# Top-level module -> the extra that installs it.
EXTRA_OF_MODULE = {
    "aiohttp": "rollout", "agentscope": "rollout", "mcp": "rollout", "greenlet": "rollout",
    "transformers": "rollout", "jinja2": "rollout",
    "torch": "train", "accelerate": "train", "peft": "train", "safetensors": "train",
    "gguf": "train", "matplotlib": "train", "tensorboardX": "train",
    "ray": "ray",
}
# A tool's own extra wins where it has one (train needs transformers from [train]).
EXTRA_OF_TOOL = {"rollout": "rollout", "train": "train"}


def missing_extra(name: str | None, tool: str | None = None) -> str | None:
    """The one-line message for a missing module (``name``, dotted or not) that an extra
    installs, or None for another module."""
    module = (name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    if module != "ray":
        extra = EXTRA_OF_TOOL.get(tool or "", extra)
    who = tool or "this"
    return (f"{who} needs the {module} package, which the [{extra}] extra installs: "
            f"pip install '{PACKAGE}[{extra}]' (or [all])")


def require(tool: str, *modules: str) -> None:
    """Fail in one line, before any work, where a module the tool needs is not installed."""
    import importlib.util

    from .errors import TracewheelError

    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise TracewheelError(missing_extra(module, tool)
                                or f"{tool} needs the {module} package")
