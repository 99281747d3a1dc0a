"""Which policy serves which agent of a multi-agent workflow: the map the user gives, as
``Solver=solver,Checker=checker`` (on the command line, in a make variable), read once here for
every tool that takes one. A policy is a name the server answers to: a LoRA adapter on the base
model, or the base model itself."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import TracewheelError


def parse_policy_map(entries: Iterable[str]) -> dict[str, str]:
    """``AGENT=POLICY`` entries (each may hold several, comma-separated) as {agent: policy};
    a TracewheelError names the entry that is not one, or an agent given twice."""
    mapping: dict[str, str] = {}
    for entry in entries:
        for item in entry.split(","):
            item = item.strip()
            if not item:
                continue
            agent, sep, policy = (part.strip() for part in item.partition("="))
            if not sep or not agent or not policy:
                raise TracewheelError(f"policy map entry {item!r}: not AGENT=POLICY")
            if agent in mapping and mapping[agent] != policy:
                raise TracewheelError(f"policy map: agent {agent!r} is given two policies "
                                      f"({mapping[agent]!r} and {policy!r})")
            mapping[agent] = policy
    if not mapping and any(e.strip() for e in entries):
        raise TracewheelError("the policy map names no agent")
    return mapping
