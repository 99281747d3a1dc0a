"""A rollout run, as `rollout run` carries it out: bring up the engine (vLLM, unless given, and
the recorder) when the first task arrives, run the workflow N times per task, write a record
per rollout, and sum them up; and `rollout record`, the recorder on its own. Plain functions
over ``RunConfig`` and ``RecordConfig`` (config.py)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import IO, Any

import click

from tracewheel.cli import Summary, progress, read_input
from tracewheel.client import Endpoint, make_client
from tracewheel.errors import TracewheelError
from tracewheel.jsonl import JsonlWriter, ReadStats, open_output, records_stdout
from tracewheel.models import EMBEDDED_MODEL
from tracewheel.workflow import absolute_spec

from . import rewards
from .config import GatewayConfig, RecordConfig, RunConfig
from .runner import RecordingEndpoint, Runner, RunnerSettings, Sessions


def run_rollouts(o: RunConfig, input: IO[bytes], output: str | None, *, skip_invalid: bool,
                 quiet: bool, verbose: int) -> None:
    """Every rollout of every task of ``input``, one record each, to ``output`` (stdout)."""
    def echo(msg: str) -> None:
        if not quiet:
            click.echo(f"rollout: {msg}", err=True)

    summary = Summary("rollout", "read", "rollouts", "ok", "error", "timeout", "invalid")
    with contextlib.ExitStack() as stack:
        sessions = Sessions()
        engine: dict[str, Any] = {}
        runner = Runner(_settings(o, engine),
                        RecordingEndpoint(start=lambda: _start(o, stack, sessions, engine, echo),
                                          sessions=sessions),
                        submit=_submitter(o))
        stats = ReadStats()
        tasks = read_input(input, "task", skip_invalid=skip_invalid, stats=stats,
                           tool="rollout", verbose=verbose)
        groups: dict[str, list] = defaultdict(list)
        rollouts = (_topped_up(runner, tasks, groups, o, summary) if o.top_up
                    else runner.all(tasks))
        versions: Counter = Counter()  # calls by the version of the weights that answered
        out = stack.enter_context(open_output(output, stdout=stack.enter_context(
            records_stdout())))
        try:
            for record in progress(_iterate(rollouts), desc="rollout", unit="rollout",
                                   quiet=quiet, total=None):
                out.write(record)
                _count(summary, record, echo)
                engine.setdefault("agents", set()).update(c.get("agent") for c in
                                                          record["calls"])
                versions.update(c.get("weight_version") for c in record["calls"])
                groups[record["group"]].append(record["reward"])
        finally:
            summary.add("read", stats.records)
            summary.absorb(stats)
            _group_figures(summary, groups, o.per_task)
            if sessions.stray:
                summary.add("stray calls", sessions.stray)
            _versions(versions, summary)
            _unused_policies(engine, summary)
            summary.print(quiet)


def _start(o: RunConfig, stack: contextlib.ExitStack, sessions: Sessions, engine: dict,
           echo: Any) -> tuple[str, str]:
    """Bring up vLLM (unless given) and the recorder: on the first task, not before."""
    upstream, name = o.base_url, o.model
    if not upstream:
        from tracewheel.vllm import VLLMServer

        served = o.serve or EMBEDDED_MODEL
        echo(f"serving {served} with vLLM for this run")
        server = stack.enter_context(VLLMServer(served, max_model_len=o.max_model_len))
        echo(f"vLLM ready at {server.base_url} in {server.startup_seconds:.0f} s")
        upstream, name = server.base_url, server.model_name
    name = name or _served_model(upstream, o.api_key, o.timeout)
    from .recorder import Recorder  # aiohttp: the [rollout] extra

    version = served_version(upstream, lambda msg: click.echo(f"rollout: {msg}", err=True))
    policies, policy_versions = _policies(o, upstream)
    recorder = stack.enter_context(Recorder(
        upstream, on_call=sessions.add, host=o.record_host, port=o.record_port,
        api_key=o.api_key, retries=o.retries, timeout=o.timeout, continuation=o.continuation,
        chat_template=o.chat_template, weight_version=version, policies=policies,
        default_policy=o.default_policy, policy_versions=policy_versions))
    sessions.on_close = recorder.forget
    engine.update(upstream=upstream, model=name, policies=policies)
    echo(f"recording at {recorder.base_url()} (upstream {upstream}, model {name}"
         + (f", weights {version}" if version is not None else "") + ")")
    if recorder.continuation_off:
        echo(f"prompts are rendered by the upstream, not continued as token ids: "
             f"{recorder.continuation_off}")
    return recorder.base_url().removesuffix("/v1"), name


def _policies(o: RunConfig, upstream: str) -> tuple[dict[str, str] | None, dict[str, str]]:
    """The policy map, each policy checked to be served upstream (a policy's adapter not
    loaded is an error before any rollout), and each policy's version: where its adapter was
    loaded from, as the server lists it."""
    from tracewheel.policies import parse_policy_map

    policies = parse_policy_map(o.policy) if o.policy else None
    if policies is None:  # (--default-policy without --policy: refused by the command)
        return None, {}
    client = make_client(Endpoint(upstream, None, o.api_key, o.timeout, 0))
    try:
        served = {m.id: (m.model_extra or {}).get("root") for m in client.models.list().data}
    except Exception as err:
        raise TracewheelError(f"{upstream}: cannot list its models to check the policies "
                              f"({type(err).__name__})") from err
    wanted = {**{p: f"agent {a}" for a, p in policies.items()},
              **({o.default_policy: "--default-policy"} if o.default_policy else {})}
    for policy, whose in wanted.items():
        if policy not in served:
            raise TracewheelError(f"policy {policy!r} ({whose}) is not served by {upstream} "
                                  f"(it serves {', '.join(sorted(served))}): load its adapter "
                                  f"first")
    return policies, {p: served[p] for p in wanted if served.get(p)}


def served_version(upstream: str, warn: Callable[[str], None]) -> str | None:
    """The version of the weights the upstream serves: vLLM's /weight_info, where it has the
    route (started with weight updates); None elsewhere, and with a warning where the route
    answers something else than a version (then calls are recorded without one)."""
    from tracewheel.weight_updates import OddVersionReply, weight_version

    try:
        return weight_version(upstream, timeout=10)
    except OddVersionReply as err:
        warn(f"WARNING: {err}; its calls are recorded without weight versions")
        return None
    except TracewheelError:
        return None


def _unused_policies(engine: dict, summary: Summary) -> None:
    """Say which agents of the policy map made no call: a name misspelt, or an agent the
    workflow does not have."""
    if not engine.get("policies"):
        return
    idle = sorted(set(engine["policies"]) - engine.get("agents", set()))
    if idle:
        summary.extra.append(f"WARNING: the policy map names agents that made no call: "
                             f"{', '.join(idle)}")


def _versions(versions: Counter, summary: Summary) -> None:
    """Where new weights came in during the run, how many calls each version answered (each
    call is marked with its own; unnumbered weights, None, say nothing)."""
    answered = {v: n for v, n in versions.items() if v is not None}
    if len(answered) > 1:
        summary.extra.append("weights changed during the run; calls by version: " + ", ".join(
            f"{v}: {n}" for v, n in answered.items()))


def _settings(o: RunConfig, engine: dict) -> RunnerSettings:
    reward_fn = rewards.reward_for(o, engine)
    return RunnerSettings(workflow=absolute_spec(o.workflow), per_task=o.per_task, jobs=o.jobs,
                          timeout=o.rollout_timeout, sampling=o.sampling(), seed=o.seed,
                          reward=reward_fn, ordered=not o.unordered)


def _submitter(o: RunConfig) -> Any:
    if o.ray_address is None:
        return None
    from .ray_exec import ray_submitter

    return ray_submitter(None if o.ray_address == "local" else o.ray_address, o.ray_cpus)


def _count(summary: Summary, record: dict, echo: Any) -> None:
    summary.add("rollouts")
    summary.add(record["status"])
    if record["status"] != "ok":
        echo(f"{record['id']}: {record['status']}: {record['error']}")
    summary.add("calls", len(record["calls"]))
    summary.add("continued calls", sum(c.get("tokens") == "continued" for c in record["calls"]))
    if record["failed_calls"]:
        summary.add("failed calls", len(record["failed_calls"]))
    for call in record["calls"] + record["failed_calls"]:
        _count_retries(summary, call)


def _count_retries(summary: Summary, call: dict) -> None:
    """Calls the recorder asked again upstream, by cause: "2 upstream retries (1 HTTP 503,
    1 no reply in 60 s)"; none, nothing said."""
    for cause in call.get("upstream_retries") or ():
        summary.add("upstream retries", reason=cause)


def _iterate(agen) -> Any:
    """An async generator, driven from synchronous code on an event loop of its own."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(agen.aclose())
        # What a workflow left running ends here, not in "Task was destroyed" at exit.
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def tied(rewards: list) -> bool:
    """A group whose rewards are all the same (and all given): no GRPO signal."""
    return len(rewards) > 1 and None not in rewards and len(set(rewards)) == 1


async def _topped_up(runner: Runner, tasks: Iterator[dict], groups: dict[str, list],
                     o: RunConfig, summary: Summary) -> AsyncIterator[dict]:
    """The rollouts of every task, then rounds of --per-task more for the tasks whose rewards
    tie (DAPO's dynamic sampling, on a fixed set of tasks), up to --top-up more each. The
    reader fills ``groups`` with each record's reward before it asks for the next one, so a
    round sees every reward before it."""
    seen: dict[str, dict] = {}

    def remember() -> Iterator[dict]:
        for task in tasks:
            seen[str(task["id"])] = task
            yield task

    async for record in runner.all(remember()):
        yield record
    start, end = o.per_task, o.per_task + o.top_up
    topped: set[str] = set()
    while start < end:
        again = [seen[g] for g, rewards in groups.items() if g in seen and tied(rewards)]
        if not again:
            break
        topped.update(str(t["id"]) for t in again)
        stop = min(start + o.per_task, end)
        async for record in runner.all(iter(again), samples=range(start, stop)):
            yield record
        start = stop
    if topped:
        broke = sum(not tied(groups[g]) for g in topped)
        summary.extra.append(f"topped up {len(topped)} tied groups, {broke} of them broke "
                             f"the tie")


def _group_figures(summary: Summary, groups: dict[str, list], per_task: int) -> None:
    rewards_ = [r for group in groups.values() for r in group if r is not None]
    if rewards_:
        summary.extra.append(f"reward mean {statistics.fmean(rewards_):.3f}")
    unscored = sum(r is None for group in groups.values() for r in group)
    if unscored:
        summary.extra.append(f"{unscored} without a reward")
    scored = [g for g in groups.values() if len(g) > 1 and None not in g]
    if per_task > 1 and scored:
        flat = sum(1 for g in scored if tied(g))
        summary.extra.append(f"{flat} of {len(scored)} groups with equal rewards "
                             f"(no GRPO signal)")


def _served_model(base_url: str, api_key: str | None, timeout: float) -> str:
    """The first model an endpoint serves (when --model is not given)."""
    client = make_client(Endpoint(base_url, None, api_key, timeout, 0))
    try:
        models = [m.id for m in client.models.list().data]
    except Exception as err:
        raise TracewheelError(f"{base_url}: cannot list its models ({type(err).__name__}); "
                            f"give --model") from err
    if not models:
        raise TracewheelError(f"{base_url} serves no model")
    return models[0]


def _proxy(o: RecordConfig, on_call: Callable[[dict], None], name: str, **more: Any) -> Any:
    """The recording proxy that ``o`` describes (not started), its calls to ``on_call``; ``name``
    says what warns about the upstream's weight versions."""
    from .recorder import Recorder  # aiohttp: the [rollout] extra

    return Recorder(o.upstream, on_call=on_call, host=o.host, port=o.port, api_key=o.api_key,
                    retries=o.retries, timeout=o.timeout, continuation=o.continuation,
                    chat_template=o.chat_template,
                    weight_version=served_version(
                        o.upstream, lambda msg: click.echo(f"{name}: {msg}", err=True)),
                    **more)


def _why_rendered(recorder: Any, name: str) -> None:
    """One line where the proxy cannot continue prompts as token ids, and why."""
    if recorder.continuation_off:
        click.echo(f"{name}: prompts are rendered by the upstream, not continued as token "
                   f"ids: {recorder.continuation_off}", err=True)


def record(o: RecordConfig, output: str | None, *, quiet: bool = False) -> None:
    """Record the calls through a proxy in front of ``o.upstream`` until SIGINT, SIGTERM or
    SIGHUP, each call a line of ``output`` (stdout when None), then print the summary."""

    summary = Summary("rollout record", "calls", "failed")
    lock = threading.Lock()
    with records_stdout() as stdout, open_output(output, stdout=stdout) as out:
        def on_call(call: dict) -> None:
            with lock:
                out.write(call)
                summary.add("calls" if call.get("status") == "ok" else "failed")
                _count_retries(summary, call)

        recorder = _proxy(o, on_call, "rollout record")

        def ready() -> None:
            click.echo(f"rollout record: recording at {recorder.base_url()} (upstream "
                       f"{recorder.upstream.url}); Ctrl-C stops", err=True)
            _why_rendered(recorder, "rollout record")

        try:
            recorder.serve_forever(ready=ready)
        except KeyboardInterrupt:  # and Terminated: the way it is meant to stop
            pass
        finally:
            summary.print(quiet)


@contextlib.contextmanager
def _session_log(output: str | None, stdout: Any) -> Iterator[JsonlWriter]:
    """Where the gateway's sessions go: stdout, or ``output`` appended to, a whole line per
    session as it ends, flushed. A service's output is a log: whatever stops the gateway, even
    SIGKILL, every session that ended is in the file, and a restart adds to it."""
    if output is None or output == "-":
        with open_output(None, stdout=stdout) as out:
            yield out
        return
    with open(output, "ab") as stream:
        yield JsonlWriter(stream, flush_each=True)


def gateway(o: GatewayConfig, output: str | None, *, quiet: bool = False) -> None:
    """The production gateway (gateway.py) in front of ``o.upstream`` until SIGINT, SIGTERM or
    SIGHUP: each ended session a rollout record on ``output`` (stdout when None; a file is
    appended to, a line as each session ends), every open session written when it stops, then
    the summary."""
    from .gateway import FEEDBACK_REWARD, SESSION_HEADER, Gateway

    summary = Summary("rollout gateway", "sessions", "with a reward", "without a reward")
    spec = FEEDBACK_REWARD if o.reward == "feedback" else o.reward
    reward = rewards.function_reward(spec) if spec else None
    with records_stdout() as stdout, _session_log(output, stdout) as out:
        gw = Gateway(out.write, summary, idle_timeout=o.idle_timeout, reward=reward)

        def on_call(call: dict) -> None:
            summary.add("calls" if call.get("status") == "ok" else "failed calls")
            _count_retries(summary, call)
            gw.on_call(call)

        recorder = _proxy(o, on_call, "rollout gateway", hooks=gw,
                          policies={} if o.live else None, default_policy=o.live)
        gw.recorder = recorder

        def ready() -> None:
            click.echo(f"rollout gateway: serving at {recorder.base_url()} (upstream "
                       f"{recorder.upstream.url}); sessions by /s/ID/v1, {SESSION_HEADER} or the "
                       f"key of POST /rl/start_session; Ctrl-C stops", err=True)
            _why_rendered(recorder, "rollout gateway")

        try:
            recorder.serve_forever(ready=ready)
        except KeyboardInterrupt:  # and Terminated: the way it is meant to stop
            pass
        finally:
            gw.end_all()
            summary.print(quiet)
