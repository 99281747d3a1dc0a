"""The real vLLM server (CPU build) with the embedded model, through the shared launcher."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import pytest
import torch

from tracewheel.chat_template import CHAT_TEMPLATE
from tracewheel.errors import TracewheelError
from tracewheel.vllm import VLLMServer, group_members
from tracewheel.vllm_cli import check

from conftest import local_logprobs

pytestmark = pytest.mark.vllm

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]},
    },
}


@pytest.fixture(scope="module")
def client(vllm_server):
    return openai.OpenAI(base_url=vllm_server.base_url, api_key="EMPTY", max_retries=0)


def test_server_binds_loopback_and_names_the_model(vllm_server, client):
    assert vllm_server.host == "127.0.0.1"
    assert [m.id for m in client.models.list().data] == ["smollm2-135m"]


def test_completion_carries_prompt_ids_completion_ids_and_logprobs(vllm_server, client, tokenizer):
    messages = [{"role": "user", "content": "What is 6 times 7?"}]
    resp = client.chat.completions.create(
        model="smollm2-135m", messages=messages, max_tokens=12, temperature=1.0, seed=1,
        logprobs=True, extra_body={"return_token_ids": True})
    choice = resp.choices[0]
    prompt_ids = resp.model_extra["prompt_token_ids"]
    completion_ids = choice.model_extra["token_ids"]
    logprobs = [t.logprob for t in choice.logprobs.content]

    assert len(logprobs) == len(completion_ids) == resp.usage.completion_tokens > 0
    assert all(lp <= 0.0 for lp in logprobs)
    # The prompt is exactly our chat template rendered by the model's own tokenizer.
    expected = tokenizer.apply_chat_template(
        messages, chat_template=CHAT_TEMPLATE.read_text(), add_generation_prompt=True,
        tokenize=True, return_dict=False)
    assert prompt_ids == list(expected)
    # The completion ids decode to the text the agent sees.
    text = tokenizer.decode(completion_ids, skip_special_tokens=True)
    assert text == choice.message.content


def test_recorded_logprobs_match_the_model_in_transformers(vllm_server, client, embedded_model_dir):
    """The served weights are the converted ones: vLLM's sampled-token logprobs agree with a
    forward pass of the same model in transformers (what GRPO's old log-probs rely on)."""
    resp = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=8, temperature=1.0, seed=3, logprobs=True,
        extra_body={"return_token_ids": True})
    prompt_ids = resp.model_extra["prompt_token_ids"]
    completion_ids = resp.choices[0].model_extra["token_ids"]
    served = torch.tensor([t.logprob for t in resp.choices[0].logprobs.content])

    local = local_logprobs(embedded_model_dir, prompt_ids, completion_ids)
    assert torch.allclose(served, local, atol=0.05), (served, local)


def test_tools_reach_the_model_and_calls_come_back_parsed(vllm_server, client, tokenizer):
    """Tool schemas, earlier calls and tool results are rendered into the prompt; the model's
    <tool_call> comes back as an OpenAI tool call (vLLM's hermes parser)."""
    earlier = {"id": "c1", "type": "function",
               "function": {"name": "calculator", "arguments": '{"expression": "2 + 2"}'}}
    messages = [
        {"role": "user", "content": "What is 2 + 2? Use the calculator."},
        {"role": "assistant", "content": None, "tool_calls": [earlier]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "assistant", "content": "2 + 2 = 4"},
        {"role": "user", "content": "What is 12 * 4? Use the calculator."},
    ]
    resp = client.chat.completions.create(
        model="smollm2-135m", max_tokens=60, temperature=0, messages=messages, tools=[CALCULATOR],
        tool_choice={"type": "function", "function": {"name": "calculator"}},
        extra_body={"return_token_ids": True})
    prompt = tokenizer.decode(resp.model_extra["prompt_token_ids"])
    assert "<tools>" in prompt and '"name": "calculator"' in prompt
    assert '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 + 2"}}' in prompt
    assert "<tool_response>\n4\n</tool_response>" in prompt
    (call,) = resp.choices[0].message.tool_calls
    assert call.function.name == "calculator"
    assert isinstance(json.loads(call.function.arguments), dict)


def test_agentscope_streaming_works_with_the_pinned_openai(vllm_server):
    """agentscope 1.0.x streaming broke with openai 3.x (TypeError on delta.audio)."""
    from agentscope.model import OpenAIChatModel

    model = OpenAIChatModel("smollm2-135m", api_key="EMPTY", stream=True,
                            client_kwargs={"base_url": vllm_server.base_url},
                            generate_kwargs={"max_tokens": 12, "temperature": 0})

    async def run():
        last = None
        chunks = 0
        async for response in await model([{"role": "user", "content": "Say hello."}]):
            last, chunks = response, chunks + 1
        return last, chunks

    last, chunks = asyncio.run(run())
    assert chunks > 1
    text = "".join(block["text"] for block in last.content if block["type"] == "text")
    assert text.strip()


def test_many_seeded_requests_at_once_are_all_answered(vllm_server):
    """rollout --seed gives every request a seed; many long prompts at once (an evaluation
    set) made the CPU build prefill them in chunks and crash its engine (every request 500)."""
    client = openai.AsyncOpenAI(base_url=vllm_server.base_url, api_key="EMPTY", max_retries=0)

    async def one(i):
        text = f"word {i} " * 300 + "Count the words."
        resp = await client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": text}], max_tokens=4,
            seed=i, temperature=1.0)
        return resp.choices[0].finish_reason

    async def run():
        return await asyncio.gather(*[one(i) for i in range(24)])

    assert all(reason in ("length", "stop") for reason in asyncio.run(run()))


def test_check_reports_token_level_figures(vllm_server):
    report = check(vllm_server)
    assert report["prompt_ids"] > 0 and report["completion_ids"] == report["logprobs"] > 0


def test_launcher_reports_a_server_that_dies_while_starting(tmp_path, monkeypatch):
    """Fault injection: an interpreter that fails at once stands in for a broken vLLM install."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ImportError: no module named vllm' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("TRACEWHEEL_VLLM_PYTHON", str(fake))
    server = VLLMServer("smollm2-135m", log_file=tmp_path / "v.log")
    with pytest.raises(TracewheelError, match=r"vLLM exited with status 3(.|\n)*no module named"):
        server.start()
    assert server.process is None


def test_launcher_stops_the_whole_process_group(tmp_path, monkeypatch):
    """A server whose children ignore the leader's death must still be gone after stop()."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        f"'{sys.executable}' -m http.server --bind 127.0.0.1 \"$(echo \"$@\" | "
        "sed -E 's/.*--port ([0-9]+).*/\\1/')\" &\n"
        "sleep 300 &\nwait\n")
    fake.chmod(0o755)
    monkeypatch.setenv("TRACEWHEEL_VLLM_PYTHON", str(fake))
    server = VLLMServer("smollm2-135m", log_file=tmp_path / "v.log", startup_timeout=60)
    # http.server answers 404 on /v1/models, so wait for the port instead of readiness.
    monkeypatch.setattr(VLLMServer, "_wait_ready", lambda self: None)
    server.start()
    pgid = server.process.pid
    time.sleep(0.5)  # let the shell start its children
    assert len(group_members(pgid)) >= 3  # the shell, http.server and sleep
    server.stop(timeout=5)
    assert group_members(pgid) == []


def test_a_port_in_use_is_refused_not_mistaken_for_a_ready_server(vllm_server):
    server = VLLMServer("smollm2-135m", port=vllm_server.port)
    with pytest.raises(TracewheelError, match=f"port {vllm_server.port} .* already in use"):
        server.start()


def _servers_on(port: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_text().split("\0")
            except OSError:
                continue
            if any("api_server" in part for part in cmdline) and str(port) in cmdline:
                pids.append(int(entry))
    return pids


def test_sigterm_to_the_tool_stops_its_server(tmp_path):
    """vLLM runs in its own process group: killing the tool must not orphan it."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "tracewheel.vllm",
                             "--log-file", str(tmp_path / "serve.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()  # printed once the server is ready
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert _servers_on(port)
        proc.terminate()
        assert proc.wait(timeout=60) == 143
    finally:
        proc.kill()
    deadline = time.monotonic() + 30
    while _servers_on(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _servers_on(port) == []


def _fake_vllm(tmp_path: Path) -> Path:
    """An interpreter standing in for vLLM: a web server whose /v1/models answers 200, in the
    process group the launcher makes for vLLM."""
    (tmp_path / "www" / "v1").mkdir(parents=True)
    (tmp_path / "www" / "v1" / "models").write_text('{"data": []}')
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        f"cd '{tmp_path / 'www'}' && exec '{sys.executable}' -m http.server --bind 127.0.0.1 "
        "\"$(echo \"$@\" | sed -E 's/.*--port ([0-9]+).*/\\1/')\"\n")
    fake.chmod(0o755)
    return fake


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent that is gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _refused(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url + "/models", timeout=2).close()
    except (urllib.error.URLError, OSError):
        return True
    return False


@pytest.mark.parametrize("how", ["its caller is killed", "SIGHUP", "SIGTERM"])
def test_the_launcher_stops_its_server_however_its_caller_stops(tmp_path, monkeypatch, how):
    """`make flywheel` serves each phase with `python -m tracewheel.vllm --exec`: a terminal
    closed, make stopped or killed, the server must not outlive the loop."""
    import subprocess

    monkeypatch.setenv("TRACEWHEEL_VLLM_PYTHON", str(_fake_vllm(tmp_path)))
    err = tmp_path / "launcher.err"
    caller = subprocess.Popen(
        ["bash", "-c", f"'{sys.executable}' -m tracewheel.vllm --log-file '{tmp_path / 'v.log'}' "
                       f"--exec sleep 600 2> '{err}' & echo $!; wait"],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    launcher = int(caller.stdout.readline())
    deadline = time.monotonic() + 60
    while "vLLM ready at" not in (err.read_text() if err.exists() else ""):
        assert time.monotonic() < deadline, err.read_text()
        time.sleep(0.2)
    url = err.read_text().split("vLLM ready at ", 1)[1].split()[0]
    assert not _refused(url)
    if how == "its caller is killed":
        caller.kill()
    else:
        os.kill(launcher, {"SIGHUP": 1, "SIGTERM": 15}[how])
    deadline = time.monotonic() + 60
    while not _refused(url) or _alive(launcher):
        assert time.monotonic() < deadline, f"the server outlived its launcher ({how})"
        time.sleep(0.2)
    caller.kill()
    caller.wait(timeout=10)


def test_a_server_leaves_nothing_in_the_temp_folder(monkeypatch):
    """vLLM puts its IPC sockets in the temp folder and leaves them there when it is stopped;
    the launcher gives it a folder of its own and removes it, with the log it made itself."""
    temp = Path(tempfile.mkdtemp(dir="/tmp"))  # short: a socket's path holds 107 bytes
    try:
        monkeypatch.setenv("TMPDIR", str(temp))
        monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
        server = VLLMServer("smollm2-135m").start()
        try:
            made = sorted(p.name for p in temp.iterdir())
            assert any(name.startswith("tracewheel-vllm-") for name in made), made
            assert any(name.startswith("vllm-") for name in made), made
            assert list((temp / next(n for n in made if n.startswith("tracewheel-"))).iterdir())
        finally:
            server.stop()
        # torch's compile cache (torchinductor_*) is meant to stay: it is reused by every run
        left = [p.name for p in temp.iterdir() if not p.name.startswith("torchinductor")]
        assert left == []
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_a_long_temp_folder_still_gives_short_socket_paths(tmp_path, monkeypatch):
    """pytest's own temp folders are long enough to break vLLM's socket paths (found in CI)."""
    from tracewheel.vllm import _rpc_folder

    deep = tmp_path / ("x" * 80)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", None)
    folder = _rpc_folder()
    try:
        assert len(folder) + 1 + 36 <= 107
    finally:
        os.rmdir(folder)


def test_a_server_that_dies_keeps_its_log(tmp_path, monkeypatch):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ImportError: no module named vllm' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("TRACEWHEEL_VLLM_PYTHON", str(fake))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    server = VLLMServer("smollm2-135m")
    with pytest.raises(TracewheelError, match=r"exited with status 3 while starting; log .*vllm-"):
        server.start()
    assert server.log_path.exists() and "no module named" in server.log_path.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []


def test_a_signal_while_the_server_starts_stops_it(tmp_path):
    """SIGTERM to a program whose vLLM is still starting (a minute on a CPU): the server, in its
    own session, must not outlive it, nor its folder of sockets."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho $$ > '{tmp_path}/server.pid'\nexec sleep 300\n")
    fake.chmod(0o755)
    script = ("from tracewheel.vllm import VLLMServer\n"
              "VLLMServer('smollm2-135m', log_file='v.log').start()\n")
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "TRACEWHEEL_VLLM_PYTHON": str(fake), "TMPDIR": str(temp)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env)
    pid_file = tmp_path / "server.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or group_members(pid) == []
    assert list(temp.iterdir()) == []


def _script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_the_launcher_finds_a_vllm_command_on_the_path(no_vllm_here):
    """pip install vllm puts a `vllm` console script on the PATH whose #! line is its
    environment's Python: the launcher runs vLLM with that Python, nothing set."""
    from tracewheel.vllm import vllm_python

    python = _script(no_vllm_here / "env" / "bin" / "python", "#!/bin/sh\n")
    _script(no_vllm_here / "bin" / "vllm", f"#!{python}\nimport vllm\n")
    assert vllm_python() == python
    # pip's form for a Python whose path is too long for a #! line
    _script(no_vllm_here / "bin" / "vllm",
            f"#!/bin/sh\n'''exec' \"{python}\" \"$0\" \"$@\"\n' '''\nimport vllm\n")
    assert vllm_python() == python


def test_the_launcher_prefers_an_explicit_python_and_this_one_to_the_path(no_vllm_here,
                                                                          monkeypatch):
    import importlib.util

    from tracewheel.vllm import vllm_python

    on_path = _script(no_vllm_here / "env" / "bin" / "python", "#!/bin/sh\n")
    _script(no_vllm_here / "bin" / "vllm", f"#!{on_path}\n")
    explicit = _script(no_vllm_here / "explicit" / "python", "#!/bin/sh\n")
    monkeypatch.setenv("TRACEWHEEL_VLLM_PYTHON", str(explicit))
    assert vllm_python() == explicit
    monkeypatch.delenv("TRACEWHEEL_VLLM_PYTHON")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else real(name, *a))
    assert vllm_python() == Path(sys.executable)  # vLLM installed beside the tools


def test_without_vllm_the_error_names_every_place_looked(no_vllm_here, monkeypatch):
    from tracewheel.vllm import vllm_python

    with pytest.raises(TracewheelError) as err:
        vllm_python()
    message = str(err.value)
    assert sys.executable in message and "no `vllm` command on the PATH" in message
    assert "TRACEWHEEL_VLLM_PYTHON is not set" in message and "--base-url" in message
    monkeypatch.setenv("TRACEWHEEL_VLLM_PYTHON", str(no_vllm_here / "missing"))
    with pytest.raises(TracewheelError, match="TRACEWHEEL_VLLM_PYTHON is .*missing, which is "
                                              "not an executable file"):
        vllm_python()


def test_a_second_vllm_on_a_cpu_takes_the_cores_no_other_server_holds(monkeypatch, tmp_path):
    """vLLM's CPU build binds its worker to core 0 however many vLLMs run: a second one
    beside the first took 10 minutes to load. Each server the launcher starts claims its cores;
    one started beside others (even at the same moment) takes the cores left."""
    from tracewheel import cpu_cores

    monkeypatch.setattr(cpu_cores, "CLAIMS_ROOT", str(tmp_path))
    monkeypatch.setattr(cpu_cores.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(cpu_cores, "cores_in_use", set)
    monkeypatch.delenv(cpu_cores.BIND, raising=False)
    live = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            for _ in range(2)]
    try:
        first: dict[str, str] = {}
        with cpu_cores.choosing(first) as claim:  # alone: vLLM's own choice, from core 0
            claim(live[0].pid)
        assert first == {}
        second: dict[str, str] = {}
        with cpu_cores.choosing(second) as claim:  # the first has not bound its worker yet
            claim(live[1].pid)
        assert second == {cpu_cores.BIND: "1,2,3"}
        live[0].kill()
        live[0].wait()
        third: dict[str, str] = {}
        with cpu_cores.choosing(third):  # the first is gone: its claim is void
            pass
        assert third == {cpu_cores.BIND: "0"}
        cpu_cores.release(live[1].pid)
        mine = {cpu_cores.BIND: "2"}  # the user's own choice stays
        with cpu_cores.choosing(mine):
            pass
        assert mine == {cpu_cores.BIND: "2"}
        monkeypatch.setattr(cpu_cores, "cores_in_use", lambda: {0})  # a vLLM started by hand
        fourth: dict[str, str] = {}
        with cpu_cores.choosing(fourth):
            pass
        assert fourth == {cpu_cores.BIND: "1,2,3"}
    finally:
        for proc in live:
            proc.kill()
            proc.wait()
