"""rollout: run agent workflows on tasks against a recording vLLM endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
from collections import defaultdict
from typing import IO, Any

import click

from flywheel.cli import (
    CONTEXT_SETTINGS,
    Summary,
    ToolCommand,
    common_options,
    input_name,
    input_options,
    output_option,
    progress,
    read_input,
    tool_group,
)
from flywheel.client import Endpoint as ClientEndpoint
from flywheel.client import endpoint_options, make_client
from flywheel.errors import FlywheelError
from flywheel.extras import require
from flywheel.jsonl import ReadStats, open_output, read_jsonl, records_stdout
from flywheel.models import EMBEDDED_MODEL
from flywheel.workflow import absolute_spec, load_workflow

from . import rewards
from .continuation import CONTINUATION
from .engine import Endpoint, Runner, Sessions, Settings


def continuation_options(fn: Any) -> Any:
    """How the recorder makes prompts: --continuation and --chat-template."""
    fn = click.option(
        "--chat-template", metavar="FILE",
        help="The Jinja chat template the upstream renders prompts with, for continued calls "
             "[default: the ChatML-with-tools template the project's vLLM serves].")(fn)
    return click.option(
        "--continuation", type=click.Choice(CONTINUATION), default="auto", show_default=True,
        help="Send a call that continues an earlier call of its session (its messages, that "
             "call's output, new messages) as token ids: that call's prompt and completion "
             "tokens, then the new messages only, so ctx-merge merges every call exactly. "
             "auto: where the upstream is vLLM and its tokenizer loads (else one line says "
             "why not); on: fail where it cannot; off: the upstream renders every prompt.")(fn)


@tool_group("rollout", default="run")
def main() -> None:
    """Run agent workflows against a recording vLLM endpoint."""


@main.command("run", cls=ToolCommand, context_settings=CONTEXT_SETTINGS)
@common_options
@input_options
@output_option
@click.option("--workflow", "-w", required=True, metavar="FILE.py:FN|MODULE:FN",
              help="The workflow: a function (task, handle), plain or async.")
@click.option("-n", "--samples", type=click.IntRange(1), default=1, show_default=True,
              help="Rollouts per task (a GRPO group).")
@click.option("-j", "--jobs", type=click.IntRange(1), default=8, show_default=True,
              help="Rollouts in flight at once.")
@click.option("--rollout-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Seconds one rollout may take; then its status is timeout.")
@endpoint_options
@click.option("--serve", "serve", metavar="MODEL",
              help=f"Serve MODEL (a model directory, or {EMBEDDED_MODEL}) with vLLM for the run. "
                   f"The default when no --base-url is given: {EMBEDDED_MODEL}.")
@click.option("--max-model-len", type=click.IntRange(256), default=4096, show_default=True,
              help="With --serve: the context length vLLM serves.")
@click.option("--temperature", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Sampling temperature of the workflow's model.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Nucleus sampling of the workflow's model.")
@click.option("--max-tokens", type=click.IntRange(1), default=512, show_default=True,
              help="Tokens one LLM call may generate.")
@click.option("--seed", type=int, default=None,
              help="Seed the sampling: the same seed gives each rollout the same seed again.")
@click.option("--reward", "reward_kind", metavar="boxed|judge|FILE.py:FN|MODULE:FN",
              help="How to score a rollout: boxed (its \\boxed{} answer against the task's "
                   "reference), judge (the trace-filter judge with --rubrics: keep 1, drop 0), "
                   "or a function (task, rollout). Default: the workflow's own reward, if any.")
@click.option("--rubrics", help="With --reward judge: the rubrics, a file or the text.")
@click.option("--judge-base-url", help="With --reward judge: the judge's endpoint "
                                       "[default: the engine, unrecorded].")
@click.option("--judge-model", help="With --reward judge: the judge's model [default: the "
                                    "policy's].")
@click.option("--judge-api-key", envvar="FLYWHEEL_JUDGE_API_KEY", show_envvar=True,
              help="With --reward judge: the judge endpoint's key.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]",
              help="Run the workflows as Ray tasks: --ray alone starts Ray on this machine, "
                   "--ray ADDRESS joins a cluster (then give --record-host an address its "
                   "workers reach).")
@click.option("--ray-cpus", type=click.FloatRange(0), default=0.25, show_default=True,
              help="With --ray: CPUs each rollout task asks Ray for.")
@click.option("--record-host", default="127.0.0.1", show_default=True,
              help="Address the recording endpoint binds.")
@click.option("--record-port", type=click.IntRange(0, 65535), default=0,
              help="Port of the recording endpoint [default: a free one].")
@continuation_options
@click.option("--unordered", is_flag=True, help="Write rollouts as they finish, not in order.")
def run(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool, verbose: int,
        workflow: str, samples: int, jobs: int, rollout_timeout: float, base_url: str | None,
        model: str | None, api_key: str | None, timeout: float, retries: int,
        serve: str | None, max_model_len: int, temperature: float, top_p: float | None,
        max_tokens: int, seed: int | None, reward_kind: str | None, rubrics: str | None,
        judge_base_url: str | None, judge_model: str | None, judge_api_key: str | None,
        ray_address: str | None, ray_cpus: float, record_host: str, record_port: int,
        continuation: str, chat_template: str | None, unordered: bool) -> None:
    """Run an agent workflow on each task N times against a recording vLLM endpoint, and write
    one rollout record per run: every LLM call with its prompt and completion token ids and
    logprobs, the final answer, and a reward. Reads task records from INPUT (default stdin).

    The engine is a running vLLM (--base-url) or one served for the run (--serve MODEL; with
    neither, the embedded model). `rollout record --help`: the recording proxy on its own.

    \b
    Examples:
      rollout --workflow examples/math_agent.py:run -n 4 --reward boxed < tasks.jsonl > r.jsonl
      rollout -w examples/math_agent.py:run --base-url http://gpu:8000/v1 --model Qwen3-8B \\
          -n 8 -j 64 --reward judge --rubrics rubrics.txt tasks.jsonl -o rollouts.jsonl
      rollout -w my_agents:workflow --ray auto -n 4 tasks.jsonl > rollouts.jsonl
    """
    if serve and base_url:
        raise click.UsageError("--serve and --base-url cannot be used together")
    require("rollout", "aiohttp", "agentscope", *(["ray"] if ray_address else []))
    if (rubrics or judge_base_url or judge_model) and reward_kind != "judge":
        raise click.UsageError("--rubrics, --judge-base-url and --judge-model need "
                               "--reward judge")
    if ray_address is None:
        load_workflow(workflow)  # a broken workflow is an error before anything starts
    sampling: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
    if top_p is not None:
        sampling["top_p"] = top_p

    def echo(msg: str) -> None:
        if not quiet:
            click.echo(f"rollout: {msg}", err=True)

    summary = Summary("rollout", "read", "rollouts", "ok", "error", "timeout", "invalid")
    with contextlib.ExitStack() as stack:
        sessions = Sessions()
        engine: dict[str, Any] = {}

        def start() -> tuple[str, str]:
            """Bring up vLLM (unless given) and the recorder: on the first task, not before."""
            upstream, name = base_url, model
            if not upstream:
                from flywheel.vllm import VLLMServer

                served = serve or EMBEDDED_MODEL
                echo(f"serving {served} with vLLM for this run")
                server = stack.enter_context(VLLMServer(served, max_model_len=max_model_len))
                echo(f"vLLM ready at {server.base_url} in {server.startup_seconds:.0f} s")
                upstream, name = server.base_url, server.model_name
            name = name or _served_model(upstream, api_key, timeout)
            from .recorder import Recorder  # aiohttp: the [rollout] extra

            recorder = stack.enter_context(Recorder(
                upstream, on_call=sessions.add, host=record_host, port=record_port,
                api_key=api_key, retries=retries, timeout=timeout, continuation=continuation,
                chat_template=chat_template))
            sessions.on_close = recorder.forget
            engine.update(upstream=upstream, model=name)
            echo(f"recording at {recorder.base_url()} (upstream {upstream}, model {name})")
            if recorder.continuation_off:
                echo(f"prompts are rendered by the upstream, not continued as token ids: "
                     f"{recorder.continuation_off}")
            root = recorder.base_url().removesuffix("/v1")
            return root, name

        reward_fn = _reward(reward_kind, rubrics, judge_base_url, judge_model, judge_api_key,
                            timeout, retries, engine)
        submit = None
        if ray_address is not None:
            from .ray_exec import ray_submitter

            submit = ray_submitter(None if ray_address == "local" else ray_address, ray_cpus)
        settings = Settings(workflow=absolute_spec(workflow), samples=samples, jobs=jobs,
                            timeout=rollout_timeout, sampling=sampling, seed=seed,
                            reward=reward_fn, ordered=not unordered)
        runner = Runner(settings, Endpoint(start=start, sessions=sessions), submit=submit)
        stats = ReadStats()
        tasks = read_input(input, "task", skip_invalid=skip_invalid, stats=stats,
                           tool="rollout", verbose=verbose)
        groups: dict[str, list] = defaultdict(list)
        stdout = stack.enter_context(records_stdout())
        out = stack.enter_context(open_output(output, stdout=stdout))
        try:
            for record in progress(_iterate(runner.all(tasks)), desc="rollout", unit="rollout",
                                   quiet=quiet, total=None):
                out.write(record)
                summary.add("rollouts")
                summary.add(record["status"])
                if record["status"] != "ok":
                    echo(f"{record['id']}: {record['status']}: {record['error']}")
                summary.add("calls", len(record["calls"]))
                summary.add("continued calls",
                            sum(c.get("tokens") == "continued" for c in record["calls"]))
                if record["failed_calls"]:
                    summary.add("failed calls", len(record["failed_calls"]))
                groups[record["group"]].append(record["reward"])
        finally:
            summary.add("read", stats.records)
            summary.absorb(stats)
            _group_figures(summary, groups, samples)
            if sessions.stray:
                summary.add("stray calls", sessions.stray)
            summary.print(quiet)


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


def _group_figures(summary: Summary, groups: dict[str, list], samples: int) -> None:
    rewards_ = [r for group in groups.values() for r in group if r is not None]
    if rewards_:
        summary.extra.append(f"reward mean {statistics.fmean(rewards_):.3f}")
    unscored = sum(r is None for group in groups.values() for r in group)
    if unscored:
        summary.extra.append(f"{unscored} without a reward")
    scored = [g for g in groups.values() if len(g) > 1 and None not in g]
    if samples > 1 and scored:
        flat = sum(1 for g in scored if len(set(g)) == 1)
        summary.extra.append(f"{flat} of {len(scored)} groups with equal rewards "
                             f"(no GRPO signal)")


def _served_model(base_url: str, api_key: str | None, timeout: float) -> str:
    """The first model an endpoint serves (when --model is not given)."""
    client = make_client(ClientEndpoint(base_url, None, api_key, timeout, 0))
    try:
        models = [m.id for m in client.models.list().data]
    except Exception as err:
        raise FlywheelError(f"{base_url}: cannot list its models ({type(err).__name__}); "
                            f"give --model") from err
    if not models:
        raise FlywheelError(f"{base_url} serves no model")
    return models[0]


def _reward(kind: str | None, rubrics: str | None, judge_base_url: str | None,
            judge_model: str | None, judge_api_key: str | None, timeout: float, retries: int,
            engine: dict) -> rewards.RewardFn | None:
    if kind is None:
        return None
    if kind == "boxed":
        return rewards.boxed
    if kind != "judge":
        return rewards.function_reward(kind)
    from flywheel.judge import Judge, JudgeSettings, rubrics_text

    text = rubrics_text(rubrics)
    built: list = []
    lock = threading.Lock()

    def judge() -> Any:
        # Built on first use: by then the engine is up, and its URL and model are known.
        with lock:
            if not built:
                endpoint = ClientEndpoint(judge_base_url or engine["upstream"],
                                          judge_model or engine["model"], judge_api_key,
                                          timeout, retries)
                client = make_client(endpoint)
                built.append(Judge(JudgeSettings(endpoint, text), lambda: client))
            return built[0]

    score = rewards.judge_reward(lambda record: judge()(record))
    return score


@main.command("record", cls=ToolCommand, context_settings=CONTEXT_SETTINGS)
@common_options
@output_option
@click.option("--upstream", envvar="OPENAI_BASE_URL", show_envvar=True, required=True,
              help="The vLLM to record, e.g. http://127.0.0.1:8000/v1.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (0.0.0.0: every interface; mind who can reach it).")
@click.option("--port", type=click.IntRange(0, 65535), default=8100, show_default=True,
              help="Port to listen on (0: a free one).")
@click.option("--api-key", envvar="OPENAI_API_KEY", show_envvar=True,
              help="Key sent upstream instead of the client's (never logged).")
@click.option("--retries", type=click.IntRange(0), default=3, show_default=True,
              help="Retries of upstream 429, 5xx and connection failures.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Seconds to wait for upstream data.")
@continuation_options
def record(output: str | None, quiet: bool, verbose: int, upstream: str, host: str,
           port: int, api_key: str | None, retries: int, timeout: float, continuation: str,
           chat_template: str | None) -> None:
    """Record the chat completions of live traffic: an OpenAI-compatible proxy in front of a
    vLLM that writes every call, with prompt and completion token ids and logprobs, as one JSON
    line to stdout (or -o FILE, complete when the proxy stops). Clients see ordinary responses;
    streaming works. Stop it with Ctrl-C.

    Point clients at http://HOST:PORT/v1, or at /s/SESSION/v1 (and /s/SESSION/agent/NAME/v1)
    to tag their calls with a session and an agent.

    \b
    Examples:
      rollout record --upstream http://127.0.0.1:8000/v1 --port 8100 > calls.jsonl
      rollout record --upstream http://gpu:8000/v1 --host 0.0.0.0 -o calls.jsonl
    """
    require("rollout", "aiohttp")
    summary = Summary("rollout record", "calls", "failed")
    lock = threading.Lock()
    with records_stdout() as stdout, open_output(output, stdout=stdout) as out:
        def on_call(call: dict) -> None:
            with lock:
                out.write(call)
                summary.add("calls" if call.get("status") == "ok" else "failed")

        from .recorder import Recorder  # aiohttp: the [rollout] extra

        recorder = Recorder(upstream, on_call=on_call, host=host, port=port, api_key=api_key,
                            retries=retries, timeout=timeout, continuation=continuation,
                            chat_template=chat_template)
        def ready() -> None:
            click.echo(f"rollout record: recording at {recorder.base_url()} (upstream "
                       f"{recorder.upstream}); Ctrl-C stops", err=True)
            if recorder.continuation_off:
                click.echo(f"rollout record: prompts are rendered by the upstream, not "
                           f"continued as token ids: {recorder.continuation_off}", err=True)

        try:  # SIGTERM and SIGHUP end it like Ctrl-C (the shared command class)
            recorder.serve_forever(ready=ready)
        except KeyboardInterrupt:
            pass
        finally:
            summary.print(quiet)


@main.command("check-template", cls=ToolCommand, context_settings=CONTEXT_SETTINGS)
@common_options
@click.argument("conversations", type=click.File("rb"), required=False)
@click.option("--model", default=EMBEDDED_MODEL, show_default=True,
              help="Whose tokenizer renders: a model directory, or the embedded model.")
@click.option("--chat-template", metavar="FILE|model",
              help="The Jinja chat template to check, or 'model' for the tokenizer's own "
                   "[default: the ChatML-with-tools template the project's vLLM serves].")
def check_template(conversations: IO[bytes] | None, quiet: bool, verbose: int, model: str,
                   chat_template: str | None) -> None:
    """Check that a chat template renders conversations append-only: the rendering of messages
    1..k is a prefix of the rendering of 1..k+1, tool calls and tool results included. Where it
    is not (earlier reasoning dropped, a turn re-rendered once others follow), token-level
    merging breaks, and only continued calls (--continuation) keep each timeline exact. Prints
    each place it is not; exits 1 if there is one.

    CONVERSATIONS: JSONL of rollout records (each call's messages and output) or task records
    (their messages) [default: a built-in conversation with tool calls].

    \b
    Examples:
      rollout check-template
      rollout check-template --model ./Qwen3-8B --chat-template model rollouts.jsonl
    """
    breaks, checked = _check_template(conversations, model, chat_template)
    for where, problem in breaks:
        click.echo(f"{where}: {problem}")
    if not quiet:
        verdict = "append-only" if not breaks else f"not append-only in {len(breaks)} place(s)"
        click.echo(f"rollout check-template: {checked} conversation(s) checked: {verdict}",
                   err=True)
    if breaks:
        raise SystemExit(1)


def _check_template(conversations: IO[bytes] | None, model: str,
                    chat_template: str | None) -> tuple[list[tuple[str, Any]], int]:
    from flywheel.chat_template import append_only_breaks, load_tokenizer, template_text

    from .continuation import SAMPLE_CONVERSATION, SAMPLE_TOOLS, record_conversations

    tokenizer, template = load_tokenizer(model), template_text(chat_template)
    if conversations is None:
        found = [("built-in conversation", SAMPLE_CONVERSATION, SAMPLE_TOOLS)]
    else:
        name = input_name(conversations)
        found = [(f"{name}: record {record.get('id', n)}", messages, tools)
                 for n, record in enumerate(read_jsonl(conversations, name), start=1)
                 for messages, tools in record_conversations(record)]
    breaks = []
    for where, messages, tools in found:
        try:
            problems = append_only_breaks(tokenizer, messages, tools, template)
        except Exception as err:  # the template's own error, about this conversation
            raise FlywheelError(f"{where}: the chat template cannot render it ({err})") from err
        breaks += [(where, problem) for problem in problems]
    return breaks, len(found)
