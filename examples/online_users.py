r"""Simulated users of the deployed math agent, for `make online`: each asks a problem of the
demo's family through the production gateway, reads the agent's answer, and tells the gateway
what it thought, the way real users and their clients do.

    python examples/online_users.py TASKS --gateway http://127.0.0.1:PORT --duration 1800 \
        -o users.jsonl

Each session takes one of the gateway's three ways in, in turn: a per-session key from
``/rl/start_session`` (AReaL's online clients), the ``X-Session-Id`` header (OpenClaw-RL), or
the ``/s/<session>/v1`` path. Then its user judges the final answer against the task's
reference, mistaken on a share of them (``--mistaken``), and says so: a reward through
``/rl/set_reward`` (``--reward-share``), thumbs up or down through ``/rl/feedback``
(``--thumbs-share``), or nothing; and the session ends (``/rl/end_session``).

Each session's line in ``-o``: ``session``, ``task_id``, ``style``, ``start`` and ``end``
(Unix seconds), ``right`` (the truth, for the report: never sent),
``judged`` (what the user said, or null) and ``error``. Nothing here reaches the gateway but
what a user would send.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from math_agent import run as solve  # noqa: E402

from tracewheel.answers import boxed_reward  # noqa: E402
from tracewheel.dedup import normalize_text  # noqa: E402

STYLES = ("key", "header", "path")
MAX_TOKENS = 128  # the loop's rollouts' budget


class UserHandle:
    """What the math agent's workflow needs (``handle.model``), on the gateway, one session's
    way in."""

    def __init__(self, base_url: str, api_key: str, headers: dict[str, str],
                 temperature: float):
        from agentscope.model import OpenAIChatModel

        self.model = OpenAIChatModel(
            "math-agent", api_key=api_key,
            client_kwargs={"base_url": base_url, "max_retries": 0, "timeout": 600.0,
                           "default_headers": headers},
            generate_kwargs={"temperature": temperature, "max_tokens": MAX_TOKENS})

    async def aclose(self) -> None:
        await self.model.client.close()


async def _post(http: aiohttp.ClientSession, url: str, body: dict) -> dict:
    async with http.post(url, json=body) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status} {data}")
        return data


async def session(http: aiohttp.ClientSession, gateway: str, task: dict, style: str,
                  rng: random.Random, opts: dict) -> dict:
    sid, key, headers = uuid.uuid4().hex, "EMPTY", {}
    base = f"{gateway}/v1"
    if style == "key":
        started = await _post(http, f"{gateway}/rl/start_session", {"task_id": task["id"]})
        sid, key = started["session_id"], started["api_key"]
    elif style == "header":
        headers = {"X-Session-Id": sid}
    else:
        base = f"{gateway}/s/{sid}/v1"
    line: dict[str, Any] = {"session": sid, "task_id": task["id"], "style": style,
                            "start": round(time.time(), 3), "right": None,
                            "judged": None, "error": None}
    handle = UserHandle(base, key, headers, opts["temperature"])
    try:
        answer = await solve(task, handle)
        line["right"] = boxed_reward(answer, task.get("reference"))[0] == 1.0
        judged = line["right"] != (rng.random() < opts["mistaken"])
        say = rng.random()
        if say < opts["reward_share"]:
            await _post(http, f"{gateway}/rl/set_reward",
                        {"session_id": sid, "reward": float(judged)})
            line["judged"] = float(judged)
        elif say < opts["reward_share"] + opts["thumbs_share"]:
            await _post(http, f"{gateway}/rl/feedback",
                        {"session_id": sid, "thumbs": "up" if judged else "down"})
            line["judged"] = "up" if judged else "down"
        await _post(http, f"{gateway}/rl/end_session", {"session_id": sid})
    except Exception as err:  # a user who met an error: counted, and the users go on
        line["error"] = f"{type(err).__name__}: {err}"[:300]
    finally:
        await handle.aclose()
    line["end"] = round(time.time(), 3)
    return line


async def users(tasks: list[dict], gateway: str, out: Any, opts: dict) -> dict:
    t0 = time.monotonic()
    counts = {"sessions": 0, "right": 0, "errors": 0}

    async def user(n: int) -> None:
        rng = random.Random(opts["seed"] * 1000 + n)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            while time.monotonic() - t0 < opts["duration"]:
                style = STYLES[counts["sessions"] % len(STYLES)]
                line = await session(http, gateway, rng.choice(tasks), style, rng, opts)
                counts["sessions"] += 1
                counts["right"] += bool(line["right"])
                counts["errors"] += line["error"] is not None
                out.write(json.dumps(line) + "\n")
                out.flush()

    await asyncio.gather(*(user(n) for n in range(opts["users"])))
    return counts


@click.command()
@click.argument("tasks", type=click.File("r"))
@click.option("--gateway", required=True, envvar="TRACEWHEEL_GATEWAY", show_envvar=True,
              help="The gateway's root URL (no /v1).")
@click.option("--exclude", type=click.File("r"), multiple=True,
              help="Labelled tasks users never ask (a gate set): by id or normalised query "
                   "(the evaluation set's disjointness check's).")
@click.option("-o", "--output", type=click.File("a"), default="-",
              help="Where each session's line goes (appended).")
@click.option("--users", type=click.IntRange(1), default=8, show_default=True,
              help="Users asking at once.")
@click.option("--duration", type=click.FloatRange(0), default=600.0, show_default=True,
              help="Seconds during which users start sessions.")
@click.option("--mistaken", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of the answers a user judges wrongly.")
@click.option("--reward-share", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of the sessions whose client sets a reward.")
@click.option("--thumbs-share", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Share whose user gives thumbs up or down (the rest: nothing).")
@click.option("--temperature", type=click.FloatRange(0), default=0.7, show_default=True,
              help="The deployed agent's sampling temperature (its users' answers are drawn "
                   "so; the gate scores greedily).")
@click.option("--seed", type=int, default=0, show_default=True)
def main(tasks: Any, gateway: str, exclude: tuple, output: Any, **opts: Any) -> None:
    """Simulated users of the math agent behind GATEWAY, on the labelled TASKS (JSONL)."""
    kept = [json.loads(line) for f in exclude for line in f if line.strip()]
    ids, queries = {t["id"] for t in kept}, {normalize_text(t["query"]) for t in kept}
    pool = [t for t in map(json.loads, filter(str.strip, tasks))
            if t["id"] not in ids and normalize_text(t["query"]) not in queries]
    if not pool:
        raise click.UsageError("no tasks (after --exclude)")
    click.echo(f"users: {len(pool)} tasks to ask", err=True)
    counts = asyncio.run(users(pool, gateway.rstrip("/"), output, opts))
    click.echo(f"users: {counts['sessions']} sessions, {counts['right']} right, "
               f"{counts['errors']} with an error", err=True)


if __name__ == "__main__":
    main()
