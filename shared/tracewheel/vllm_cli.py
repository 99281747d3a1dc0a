"""``python -m tracewheel.vllm``: serve a model with vLLM until stopped, check that it answers with
token ids and logprobs, run a command against it, or load new weights or an adapter into a
running one. The launcher itself is ``vllm.py``; the routes that load weights,
``weight_updates.py``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import click

from .cli import exit_status, tool_command
from .errors import TracewheelError
from .models import MAX_MODEL_LEN
from .vllm import VLLMServer
from .weight_updates import call_route, load_adapter, load_weights


def check(server: VLLMServer) -> dict:
    """One chat completion that must carry prompt ids, completion ids and one logprob per token."""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
    resp = client.chat.completions.create(
        model=server.model_name, messages=[{"role": "user", "content": "What is 2 + 3?"}],
        max_tokens=16, temperature=0, logprobs=True, extra_body={"return_token_ids": True},
    )
    extra = resp.model_extra or {}
    choice = resp.choices[0]
    completion_ids = (choice.model_extra or {}).get("token_ids") or []
    logprobs = [t.logprob for t in (choice.logprobs.content if choice.logprobs else [])]
    report = {
        "text": choice.message.content,
        "prompt_ids": len(extra.get("prompt_token_ids") or []),
        "completion_ids": len(completion_ids),
        "logprobs": len(logprobs),
    }
    if not report["prompt_ids"] or not completion_ids or len(logprobs) != len(completion_ids):
        raise TracewheelError(f"vLLM answered without token ids or logprobs: {report}")
    return report


def _watch_the_caller() -> None:
    """The launcher ends, and stops its server, when its caller dies (make killed with
    SIGKILL): the server runs in a session of its own, so nothing else would reach it. SIGTERM
    and SIGHUP end it through ``signals_as_exceptions``, as they end every tool."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)  # orphaned: end as if told to

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _load(model: str, url: str, adapter: str | None, weight_version: str | None) -> None:
    """--load-into: new weights, or an adapter, into the running server at ``url``."""
    if adapter:
        seconds = load_adapter(url, adapter, model)
    else:
        seconds = load_weights(url, model, weight_version)
    what = f"adapter {adapter!r}" if adapter else "weights"
    click.echo(f"vLLM at {url}: {what} of {model} loaded in {seconds:.1f} s", err=True)


def _run_against(server: VLLMServer, command: list[str]) -> int:
    """``command`` with OPENAI_BASE_URL and TRACEWHEEL_MODEL pointing at ``server``; its exit
    status. Stopped (a signal), the command goes first, then the server."""
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url,
           "TRACEWHEEL_MODEL": server.model_name}
    with subprocess.Popen(command, env=env) as child:
        try:
            return child.wait()
        except BaseException:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
            raise


def _serve(server: VLLMServer, weight_version: str | None, check_only: bool,
           command: list[str]) -> int:
    """What the launcher does with a server that is up: check it, run a command against it,
    or serve until stopped; the exit status."""
    click.echo(f"vLLM ready at {server.base_url} in {server.startup_seconds:.1f} s; "
               f"log {server.log_path}", err=True)
    if weight_version and server.weight_updates:
        call_route(server.url, "/update_weight_version", {"new_version": weight_version}, 30,
                   "setting the weight version")
    if check_only:
        click.echo(json.dumps(check(server), ensure_ascii=False))
        return 0
    if command:
        return _run_against(server, command)
    click.echo(server.base_url)
    while server.process and server.process.poll() is None:
        time.sleep(1)
    click.echo(f"vLLM exited; log {server.log_path}", err=True)
    return 1


@tool_command("tracewheel.vllm")
@click.argument("model", default="smollm2-135m")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), help="Port [default: a free one].")
@click.option("--log-file", type=click.Path(dir_okay=False),
              help="The server's log [default: a new file in the temp folder, kept].")
@click.option("--max-model-len", type=click.IntRange(256), default=MAX_MODEL_LEN, show_default=True,
              help="Longest prompt and completion together, in tokens.")
@click.option("--weight-updates", is_flag=True,
              help="Serve vLLM's routes that take new weights without a restart (--load-into).")
@click.option("--load-into", metavar="URL",
              help="Start nothing: load MODEL's weights into the running server at URL (started "
                   "with --weight-updates), then exit.")
@click.option("--weight-version", metavar="V",
              help="The weights' version the server answers (/weight_info), with --load-into or "
                   "--weight-updates [default: MODEL's path; at start, vLLM's 'default'].")
@click.option("--lora-rank", type=click.IntRange(0), default=0,
              help="Serve LoRA adapters up to this rank, loaded while it runs (--load-into URL "
                   "--adapter NAME).")
@click.option("--adapter", metavar="NAME",
              help="With --load-into: MODEL is a LoRA adapter, served as NAME.")
@click.option("--check", "check_only", is_flag=True,
              help="Start, check one completion carries token ids and logprobs, stop.")
@click.option("--exec", "exec_", is_flag=True,
              help="Run the command that follows (all the rest of the line) against the server, "
                   "then stop it; its exit status is this one's.")
@click.pass_obj
def _command(command: list[str], model: str, host: str, port: int | None,
             log_file: str | None, max_model_len: int, weight_updates: bool,
             load_into: str | None, weight_version: str | None, lora_rank: int,
             adapter: str | None, check_only: bool, exec_: bool) -> None:
    """Serve MODEL (default: the embedded model) with vLLM on 127.0.0.1 until Ctrl-C, printing
    its base URL on stdout; with --check, ask one question and stop; with --exec CMD...,
    run CMD with OPENAI_BASE_URL and TRACEWHEEL_MODEL pointing at the server, then stop it (so
    several steps share one server, and none outlives them).

    \b
    Examples:
      python -m tracewheel.vllm --check
      python -m tracewheel.vllm runs/demo/iter-1/ckpt --weight-updates --exec make evals
      python -m tracewheel.vllm runs/demo/iter-2/ckpt --load-into http://127.0.0.1:8000 \\
          --weight-version 2
    """
    if load_into:
        _load(model, load_into, adapter, weight_version)
        return
    _watch_the_caller()
    # A log the launcher names to the user is theirs to keep.
    with VLLMServer(model, host=host, port=port, log_file=log_file, keep_log=True,
                    max_model_len=max_model_len, weight_updates=weight_updates,
                    lora_rank=lora_rank) as server:
        raise SystemExit(_serve(server, weight_version, check_only, command))


def main(argv: Sequence[str] | None = None) -> int:
    """python -m tracewheel.vllm: the exit status. What follows --exec is the command to run,
    options and all, so it is split off before the options are read."""
    args = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--exec" in args:
        at = args.index("--exec")
        args, command = args[:at + 1], args[at + 1:]
        if not command:
            click.echo("Error: --exec needs a command", err=True)
            return 2
    return exit_status(_command, args, "python -m tracewheel.vllm", obj=command)

