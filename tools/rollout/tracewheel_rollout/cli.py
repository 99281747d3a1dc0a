"""rollout: run agent workflows on tasks against a recording vLLM endpoint."""

from __future__ import annotations

from typing import IO, Any

import click

from tracewheel.cli import (
    CONTEXT_SETTINGS,
    ToolCommand,
    common_options,
    input_name,
    input_options,
    output_option,
    tool_group,
)
from tracewheel.client import endpoint_options
from tracewheel.errors import TracewheelError
from tracewheel.extras import require
from tracewheel.jsonl import read_jsonl
from tracewheel.models import EMBEDDED_MODEL
from tracewheel.policies import parse_policy_map
from tracewheel.workflow import load_workflow

from .config import CONTINUATION, GatewayConfig, RecordConfig, RunConfig
from .rewards import BUILT_IN

R = RunConfig(workflow="")  # the defaults, stated once (config.py)
RC = RecordConfig()  # rollout record's


def continuation_options(fn: Any) -> Any:
    """How the recorder makes prompts: --continuation and --chat-template."""
    fn = click.option(
        "--chat-template", metavar="FILE",
        help="The Jinja chat template the upstream renders prompts with, for continued calls "
             "[default: the ChatML-with-tools template the project's vLLM serves].")(fn)
    return click.option(
        "--continuation", type=click.Choice(CONTINUATION), default=R.continuation,
        show_default=True,
        help="Send a call that continues an earlier call of its session (its messages, that "
             "call's output, new messages) as token ids: that call's prompt and completion "
             "tokens, then the new messages only, so ctx-merge merges every call exactly. "
             "auto: where the upstream is vLLM and its tokenizer loads (else one line says "
             "why not); on: fail where it cannot; off: the upstream renders every prompt.")(fn)


def proxy_options(fn: Any) -> Any:
    """The recording proxy's options (rollout record, rollout gateway): where it listens, the
    upstream it records, and how it makes prompts."""
    fn = continuation_options(fn)
    for decorate in reversed([
        click.option("--upstream", envvar="OPENAI_BASE_URL", show_envvar=True, required=True,
                      help="The vLLM behind it, e.g. http://127.0.0.1:8000/v1."),
        click.option("--host", default=RC.host, show_default=True,
                     help="Address to bind (0.0.0.0: every interface; mind who can reach it)."),
        click.option("--port", type=click.IntRange(0, 65535), default=RC.port,
                     show_default=True, help="Port to listen on (0: a free one)."),
        click.option("--api-key", envvar="OPENAI_API_KEY", show_envvar=True,
                     help="Key sent upstream instead of the client's (never logged)."),
        click.option("--retries", type=click.IntRange(0), default=RC.retries,
                     show_default=True,
                     help="Retries of upstream 429, 5xx and connection failures."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
                     default=RC.timeout, show_default=True,
                     help="Seconds to wait for upstream data."),
    ]):
        fn = decorate(fn)
    return fn


@tool_group("rollout", default="run")
def main() -> None:
    """Run agent workflows against a recording vLLM endpoint."""


@main.command("run", cls=ToolCommand, context_settings=CONTEXT_SETTINGS,
              short_help="Run a workflow on each task N times; one rollout record per run.")
@common_options
@input_options
@output_option
@click.option("--workflow", "-w", required=True, metavar="FILE.py:FN|MODULE:FN",
              help="The workflow: a function (task, handle), plain or async.")
@click.option("-n", "--per-task", type=click.IntRange(1), default=R.per_task, show_default=True,
              help="Rollouts per task (a GRPO group).")
@click.option("--top-up", type=click.IntRange(0), metavar="N", default=R.top_up,
              show_default=True,
              help="Dynamic sampling: a task whose rollouts all got the same reward (no GRPO "
                   "signal) gets up to N more, drawn --per-task at a time after the others, "
                   "until one reward differs; counted in the summary.")
@click.option("-j", "--jobs", type=click.IntRange(1), default=R.jobs, show_default=True,
              help="Rollouts in flight at once.")
@click.option("--rollout-timeout", type=click.FloatRange(min=0, min_open=True),
              default=R.rollout_timeout,
              show_default=True, help="Seconds one rollout may take; then its status is timeout.")
@endpoint_options
@click.option("--serve", "serve", metavar="MODEL",
              help=f"Serve MODEL (a model directory, or {EMBEDDED_MODEL}) with vLLM for the run. "
                   f"The default when no --base-url is given: {EMBEDDED_MODEL}.")
@click.option("--max-model-len", type=click.IntRange(256), default=R.max_model_len,
              show_default=True,
              help="With --serve: the context length vLLM serves.")
@click.option("--temperature", type=click.FloatRange(0), default=R.temperature, show_default=True,
              help="Sampling temperature of the workflow's model.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Nucleus sampling of the workflow's model.")
@click.option("--max-tokens", type=click.IntRange(1), default=R.max_tokens, show_default=True,
              help="Tokens one LLM call may generate.")
@click.option("--seed", type=int, default=None,
              help="Seed the sampling: the same seed gives each rollout the same seed again.")
@click.option("--reward", "reward_kind", metavar="|".join([*BUILT_IN, "FILE.py:FN", "MODULE:FN"]),
              help="How to score a rollout: " + "; ".join(
                  f"{name}: {r.help}" for name, r in BUILT_IN.items()) +
                   "; or a function (task, rollout). Default: the workflow's own reward, if any.")
@click.option("--rubrics", help="With --reward judge: the rubrics, a file or the text.")
@click.option("--judge-base-url", help="With --reward judge: the judge's endpoint "
                                       "[default: the engine, unrecorded].")
@click.option("--judge-model", help="With --reward judge: the judge's model [default: the "
                                    "policy's].")
@click.option("--judge-api-key", envvar="TRACEWHEEL_JUDGE_API_KEY", show_envvar=True,
              help="With --reward judge: the judge endpoint's key.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]",
              help="Run the workflows as Ray tasks: --ray alone starts Ray on this machine, "
                   "--ray ADDRESS joins a cluster (then give --record-host an address its "
                   "workers reach).")
@click.option("--ray-cpus", type=click.FloatRange(0), default=R.ray_cpus, show_default=True,
              help="With --ray: CPUs each rollout task asks Ray for.")
@click.option("--record-host", default=R.record_host, show_default=True,
              help="Address the recording endpoint binds.")
@click.option("--record-port", type=click.IntRange(0, 65535), default=0,
              help="Port of the recording endpoint [default: a free one].")
@continuation_options
@click.option("--unordered", is_flag=True, help="Write rollouts as they finish, not in order.")
@click.option("--policy", "policy", multiple=True, metavar="AGENT=POLICY[,...]",
              help="Multi-agent: send AGENT's calls to the served model POLICY (a LoRA adapter "
                   "on the base: one policy per agent), whatever model the agent names; every "
                   "call records its policy and the policy's version (its adapter's path). "
                   "Repeat, or comma-separate. An agent outside the map fails its calls, unless "
                   "--default-policy names its policy.")
@click.option("--default-policy", metavar="POLICY",
              help="With --policy: the served model of agents outside the map (the base "
                   "model's name: the frozen base).")
def run(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool, verbose: int,
        **options: Any) -> None:
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
    opts = RunConfig(**options)
    if opts.serve and opts.base_url:
        raise click.UsageError("--serve and --base-url cannot be used together")
    require("rollout", "aiohttp", "agentscope", *(["ray"] if opts.ray_address else []))
    if (opts.rubrics or opts.judge_base_url or opts.judge_model) and opts.reward_kind != "judge":
        raise click.UsageError("--rubrics, --judge-base-url and --judge-model need "
                               "--reward judge")
    if opts.default_policy and not opts.policy:
        raise click.UsageError("--default-policy needs --policy (the policy map)")
    if opts.top_up and opts.per_task < 2:
        raise click.UsageError("--top-up needs --per-task 2 or more (a group whose rewards "
                               "can tie)")
    try:
        parse_policy_map(opts.policy)
    except TracewheelError as err:
        raise click.UsageError(f"--policy: {err.message}") from None
    if opts.ray_address is None:
        load_workflow(opts.workflow)  # a broken workflow is an error before anything starts
    from .run import run_rollouts  # the runner and its clients: not at --help

    run_rollouts(opts, input, output, skip_invalid=skip_invalid, quiet=quiet, verbose=verbose)


@main.command("record", cls=ToolCommand, context_settings=CONTEXT_SETTINGS,
              short_help="A recording proxy in front of a vLLM: every call as a JSON line.")
@common_options
@output_option
@proxy_options
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
    from .run import record as record_calls

    record_calls(RecordConfig(upstream=upstream, host=host, port=port, api_key=api_key,
                              retries=retries, timeout=timeout, continuation=continuation,
                              chat_template=chat_template), output, quiet=quiet)


@main.command("gateway", cls=ToolCommand, context_settings=CONTEXT_SETTINGS,
              short_help="The production gateway: live sessions, rewards and feedback, each "
                         "ended session a rollout record.")
@common_options
@click.option("-o", "--output", metavar="FILE",
              help="Append each ended session to FILE, a whole line as it ends, instead of "
                   "writing to stdout.")
@proxy_options
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True),
              default=GatewayConfig.idle_timeout, show_default=True,
              help="A session without a call for this many seconds ends (and is written).")
@click.option("--live", metavar="MODEL", default=GatewayConfig.live,
              help="Send every call to this served model, whatever its client named, and let "
                   "POST /rl/promote switch it (a candidate's adapter, a rollback); each call "
                   "records the model that answered.")
@click.option("--reward", metavar="feedback|FILE.py:FN", default=GatewayConfig.reward,
              help="The reward of a session its client gave none: feedback (its users' last "
                   "thumbs: up 1, down 0) or a function (task, rollout); default: none.")
def gateway(output: str | None, quiet: bool, verbose: int, **options: Any) -> None:
    """Serve agents in production and keep their conversations for training: an
    OpenAI-compatible proxy in front of the serving vLLM that records every call's token ids and
    logprobs by session, takes rewards and users' feedback, and writes each session when it
    ends as one rollout record (what ctx-merge reads) to stdout, or appends it to -o FILE (a
    whole line as each session ends: a log, whatever stops the gateway).

    \b
    A call's session: the path /s/SESSION/v1, else the header X-Session-Id (X-Turn-Type: side
    marks a turn not trained on, X-Session-Done: true ends the session), else the key that
    POST /rl/start_session returned, as the client's API key. A call with none is a session
    of its own. The API: POST /rl/start_session, /rl/set_reward {session_id|completion_id,
    reward}, /rl/feedback {session_id, thumbs, text} (or /feedback), /rl/end_session
    {session_id}. A session also ends after --idle-timeout, and every open one when the
    gateway stops. With --live: POST /rl/promote {model}, GET /rl/live.

    \b
    Examples:
      rollout gateway --upstream http://127.0.0.1:8000/v1 --port 8100 -o sessions.jsonl
      rollout gateway --upstream http://gpu:8000/v1 --reward feedback | ctx-merge > samples.jsonl
    """
    require("rollout", "aiohttp")
    opts = GatewayConfig(**options)
    if opts.reward and opts.reward != "feedback" and ":" not in opts.reward:
        raise click.UsageError(f"--reward {opts.reward!r}: feedback, or FILE.py:FN")
    from .run import gateway as run_gateway

    run_gateway(opts, output, quiet=quiet)


@main.command("check-template", cls=ToolCommand, context_settings=CONTEXT_SETTINGS,
              short_help="Check that a chat template renders conversations append-only.")
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
    from tracewheel.chat_template import append_only_breaks, load_tokenizer, template_text

    from .continuation import SAMPLE_CONVERSATION, SAMPLE_TOOLS, record_conversations

    tokenizer, template = load_tokenizer(model), template_text(chat_template)
    if conversations is None:
        found = [("built-in conversation", SAMPLE_CONVERSATION, SAMPLE_TOOLS)]
    else:
        name = input_name(conversations)
        found = [(f"{name}: record {record.get('id', n)}", messages, tools)
                 for n, record in enumerate(read_jsonl(conversations, name, hint=None), start=1)
                 for messages, tools in record_conversations(record)]
    breaks = []
    for where, messages, tools in found:
        try:
            problems = append_only_breaks(tokenizer, messages, tools, template)
        except Exception as err:  # the template's own error, about this conversation
            raise TracewheelError(f"{where}: the chat template cannot render it ({err})") from err
        breaks += [(where, problem) for problem in problems]
    return breaks, len(found)
