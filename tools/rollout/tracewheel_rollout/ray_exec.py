"""Workflows as Ray tasks (``rollout --ray [ADDRESS]``): the driver keeps the recording endpoint
and the bookkeeping; each rollout's workflow runs in a Ray worker, on any machine of the
cluster, and calls the model through the driver's recording endpoint like a local one would.

Workers import the workflow themselves: a FILE.py workflow must be at the same path on every
machine (or shipped with Ray's ``runtime_env``), a MODULE workflow importable there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from tracewheel.workflow import Handle, call_workflow, load_workflow


def _run_remote(spec: str, task: dict, handle: dict) -> dict:
    """In a Ray worker: run one rollout's workflow, return its Result as plain data."""
    result = asyncio.run(call_workflow(load_workflow(spec), task, Handle(**handle)))
    return asdict(result)


def ray_submitter(address: str | None, cpus: float
                  ) -> Callable[[str, dict, Handle], Awaitable[dict]]:
    """Join (or, with no address, start) Ray; return ``submit(spec, task, handle)``."""
    import ray

    if not ray.is_initialized():
        # Local Ray binds 127.0.0.1 and runs no dashboard: nothing listens beyond this machine.
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                  "configure_logging": False}
        if address is None:
            kwargs["_node_ip_address"] = "127.0.0.1"
        ray.init(address=address, **kwargs)
    remote = ray.remote(num_cpus=cpus, max_retries=0)(_run_remote)

    async def submit(spec: str, task: dict, handle: Handle) -> dict:
        ref = remote.remote(spec, task, handle.to_dict())
        try:
            return await ref
        except asyncio.CancelledError:  # the rollout timed out: stop its worker too
            ray.cancel(ref, force=True)
            raise

    return submit
