"""``python -m tracewheel.online``: the flywheel closed online. The deployed agent's traffic,
with the rewards and feedback its users give, trains the next model while the agent serves,
and a gate keeps out any model that is not better.

Against a running vLLM (``--server``, started with LoRA adapters enabled) serving the live model
``--base``, it starts the production gateway (``rollout gateway --live``) in front of it and the
traffic (``--traffic``: a command, e.g. the simulated users of ``examples/online_users.py``,
given the gateway's URL in ``$TRACEWHEEL_GATEWAY``), and then, until the traffic ends or
``--duration`` passes:

  1. reads the sessions the gateway writes as they end (rollout records, each call with the
     model that answered it); a session without a reward is counted, not trained on;
  2. when ``--batch`` rewarded sessions have come since the live model went live, trains a
     candidate: a LoRA adapter (``train --lora-r``) going on from the live one, on all of them
     (``ctx-merge``, then rejection sampling: the right ones);
  3. serves it beside the live model under its own name (``cand-N``), scores both on the gate
     set of labelled tasks (greedy, the same seeds; the live model's score is kept) and asks
     ``tracewheel.gate`` whether it may go live;
  4. promotes it (``POST /rl/promote`` at the gateway: calls in flight finish on the model they
     started on, so no request fails) or keeps it aside, and says why.

Every step is a line of ``OUT/online.jsonl``; ``OUT/report.md`` is written at the end (and by
``--report-only``). A rollback is one call: ``curl -d '{"model": "cand-1"}' GATEWAY/rl/promote``
(every adapter stays loaded under its name). ``--invert N`` trains candidate N on inverted
rewards: a model made bad on purpose, to see the gate refuse it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from .cli import exit_status, tool_command
from .errors import TracewheelError
from .estimates import read
from .gate import MARGIN, RULES, decide
from .jsonl import loads
from .weight_updates import call_route, load_adapter

GATEWAY_ENV = "TRACEWHEEL_GATEWAY"


@dataclass
class OnlineConfig:
    """What the online loop is asked to do; every default is here."""

    server: str = ""                   # the vLLM root URL (no /v1)
    base: str = ""                     # the live model's directory, as vLLM serves it
    gate_set: str = ""                 # labelled tasks every candidate is scored on
    workflow: str = "examples/math_agent.py:run"
    gate_reward: str = "boxed"         # rollout's --reward on the gate set; workflow: its own
    out: str = "online"
    traffic: str | None = None         # a command that sends users' sessions
    batch: int = 48                    # rewarded sessions per candidate
    lora_r: int = 8
    train_threads: int = 0             # train's CPU threads; 0: half the cores (vLLM has the rest)
    train_args: str = "--algo sft --min-reward 1 --lr 5e-4 --epochs 2"
    rule: str = "better"               # tracewheel.gate's rule
    margin: float = MARGIN
    gate_jobs: int = 8
    max_tokens: int = 128
    duration: float = 1800.0           # seconds of traffic
    idle_timeout: float = 120.0        # a session without a call this long ends
    poll: float = 5.0
    max_candidates: int = 0            # stop after this many candidates; 0: when time is up
    seed: int = 0
    invert: tuple[int, ...] = field(default_factory=tuple)  # candidates trained on 1 - reward


def tool(name: str) -> str:
    """A toolkit command installed beside this interpreter (or on the PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise TracewheelError(f"{name}: not installed beside {sys.executable} nor on the PATH")
    return found


def _get(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict, timeout: float = 60.0) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


class Loop:
    """The online loop's state: the live model, the sessions read, the candidates."""

    def __init__(self, cfg: OnlineConfig, served_name: str, gateway: str):
        self.cfg = cfg
        self.gateway = gateway
        self.out = Path(cfg.out)
        self.live = served_name            # the name the live model is served under
        self.live_adapter: Path | None = None
        self.read_upto = 0                 # bytes of the sessions file read
        self.lines_read = 0
        self.trained: set[str] = set()     # ids of the sessions some candidate learnt from
        self.pool: list[dict] = []         # rewarded sessions since the live model went live
        self.counts = {"sessions": 0, "with a reward": 0, "without a reward": 0,
                       "trained on": 0}
        self.candidates = 0
        self.wanted = cfg.batch            # rewarded sessions the next candidate waits for
        self.gate_scores: dict[str, Path] = {}
        self.events = open(self.out / "online.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def enough(self) -> bool:
        return 0 < self.cfg.max_candidates <= self.candidates

    @property
    def sessions_path(self) -> Path:
        return self.out / "sessions.jsonl"

    def event(self, kind: str, **fields: object) -> None:
        line = {"time": round(time.time(), 3), "event": kind, **fields}
        self.events.write(json.dumps(line) + "\n")
        self.events.flush()
        click.echo(f"online: {kind} " + json.dumps(fields)[:300], err=True)

    def read_sessions(self) -> None:
        """The sessions ended since the last read (whole lines only: one being written waits)."""
        if not self.sessions_path.exists():
            return
        with open(self.sessions_path, "rb") as f:
            f.seek(self.read_upto)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.read_upto += end
        for raw in data[:end].splitlines():
            self.lines_read += 1
            if not raw.strip():
                continue
            try:
                record = loads(raw)
            except ValueError as err:
                raise TracewheelError(f"{self.sessions_path}, line {self.lines_read}: not "
                                      f"JSON ({err})") from None
            self.counts["sessions"] += 1
            if record.get("reward") is None or not record.get("calls"):
                self.counts["without a reward"] += 1
                continue
            self.counts["with a reward"] += 1
            self.pool.append(record)

    def gate_score(self, model: str) -> Path:
        """The model's rollouts of the gate set (once per model)."""
        if model not in self.gate_scores:
            path = self.out / "gate" / f"{model.replace('/', '_')}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            reward = [] if self.cfg.gate_reward == "workflow" else ["--reward",
                                                                     self.cfg.gate_reward]
            run([tool("rollout"), "-w", self.cfg.workflow, "--base-url",
                 f"{self.cfg.server}/v1", "--model", model, "--temperature", "0",
                 "--seed", str(self.cfg.seed), *reward, "-j",
                 str(self.cfg.gate_jobs), "--max-tokens", str(self.cfg.max_tokens), "-q",
                 self.cfg.gate_set, "-o", str(path)])
            self.gate_scores[model] = path
        return self.gate_scores[model]

    def candidate(self) -> None:
        """The next candidate; one that fails (to train, to load, to be scored) is counted
        and the live model goes on serving, and the next waits for another batch."""
        self.candidates += 1
        self.wanted = len(self.pool) + self.cfg.batch
        try:
            self._candidate(self.candidates, f"cand-{self.candidates}")
        except (TracewheelError, OSError) as err:
            self.event("candidate failed", candidate=f"cand-{self.candidates}",
                       sessions=len(self.pool), reason=str(err)[:500])

    def _candidate(self, k: int, name: str) -> None:
        """Train, serve, gate and promote (or keep aside) candidate ``k``."""
        folder = self.out / name
        folder.mkdir(parents=True, exist_ok=True)
        invert = k in self.cfg.invert
        with open(folder / "rollouts.jsonl", "w", encoding="utf-8") as f:
            for record in self.pool:
                if invert:
                    record = {**record, "reward": 1.0 - record["reward"]}
                f.write(json.dumps(record) + "\n")
        t = time.monotonic()
        run([tool("ctx-merge"), "-q", str(folder / "rollouts.jsonl"),
             "-o", str(folder / "samples.jsonl")])
        init = ["--init-adapter", str(self.live_adapter)] if self.live_adapter else []
        run([tool("train"), "--model", self.cfg.base, "--lora-r", str(self.cfg.lora_r),
             "--save-adapter", *init, *shlex.split(self.cfg.train_args), "--allow-empty",
             "--seed", str(self.cfg.seed), "--out", str(folder / "adapter"),
             str(folder / "samples.jsonl"), "-o", str(folder / "metrics.jsonl")],
            env={**os.environ, "OMP_NUM_THREADS": str(self.cfg.train_threads
                                                      or max(1, (os.cpu_count() or 2) // 2))})
        trained_s = time.monotonic() - t
        load_adapter(self.cfg.server, name, folder / "adapter")
        verdict = decide(read(self.gate_score(self.live)), read(self.gate_score(name)),
                         rule=self.cfg.rule, margin=self.cfg.margin)
        self.trained.update(r["id"] for r in self.pool)
        self.counts["trained on"] = len(self.trained)
        promoted = False
        if verdict["decision"] == "promote":
            status, reply = _post(f"{self.gateway}/rl/promote", {"model": name})
            promoted = status == 200
            if not promoted:
                verdict["reason"] += f"; the gateway refused the promotion: {reply}"
        self.event("candidate", candidate=name, sessions=len(self.pool), inverted=invert,
                   train_s=round(trained_s, 1), live=self.live, promoted=promoted,
                   live_right=verdict["live"], candidate_right=verdict["candidate"],
                   **{k: verdict[k] for k in ("decision", "reason", "rule", "margin",
                                              "tasks", "change")})
        if promoted:
            self.live, self.live_adapter, self.pool = name, folder / "adapter", []
            self.wanted = self.cfg.batch


def run(command: list[str], env: dict[str, str] | None = None) -> None:
    """A step of the loop; its failure is a TracewheelError with the step's command. The loop
    stopped meanwhile (a signal) stops the step with SIGTERM, so it cleans up as a tool does
    (subprocess.run would SIGKILL it: a rollout's half-written output file was left behind)."""
    proc = spawn(command, env=env)
    try:
        code = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    if code != 0:
        raise TracewheelError(f"{Path(command[0]).name} exited with {code}: "
                              f"{shlex.join(command)}")


def _die_with_parent() -> None:
    """In a child, before it runs: SIGTERM when the loop dies, even by SIGKILL (Linux), so
    the gateway and the traffic never outlive it."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(command: list[str], **kwargs: object) -> subprocess.Popen:
    """A child of the loop in a process group of its own (stopped as a whole), that dies with
    the loop."""
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_parent, **kwargs)  # type: ignore[arg-type]


def _start_gateway(cfg: OnlineConfig, served: str, port: int) -> subprocess.Popen:
    with open(Path(cfg.out) / "gateway.log", "ab") as log:  # the child keeps its own copy
        return spawn(
            [tool("rollout"), "gateway", "--upstream", cfg.server, "--port", str(port),
             "--live", served, "--reward", "feedback", "--idle-timeout",
             str(cfg.idle_timeout), "-o", str(Path(cfg.out) / "sessions.jsonl")], stderr=log)


def _wait_up(url: str, proc: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TracewheelError(f"the gateway exited ({proc.returncode}) before it was up")
        try:
            _get(f"{url}/rl/live", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TracewheelError(f"the gateway at {url} was not up in {seconds:.0f} s")


def _stop(proc: subprocess.Popen | None, timeout: float = 60.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def online(cfg: OnlineConfig) -> Path:
    """The loop (see the module's docstring); the report's path."""
    from .vllm import free_port

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    models = call_route(cfg.server, "/v1/models", None, 30, "listing its models", method="GET")
    served = next(m["id"] for m in models.get("data") or [] if not m.get("parent"))
    port = free_port()
    loop = Loop(cfg, served, f"http://127.0.0.1:{port}")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    gateway = traffic = None
    try:
        gateway = _start_gateway(cfg, served, port)
        _wait_up(loop.gateway, gateway)
        loop.event("start", live=served, gateway=loop.gateway)
        loop.gate_score(served)
        if cfg.traffic:
            traffic = spawn(shlex.split(cfg.traffic),
                            env={**os.environ, GATEWAY_ENV: loop.gateway})
        deadline = time.monotonic() + cfg.duration
        while time.monotonic() < deadline and (traffic is None or traffic.poll() is None) \
                and not loop.enough():
            loop.read_sessions()
            if len(loop.pool) >= loop.wanted:
                loop.candidate()
            else:
                time.sleep(cfg.poll)
        ended = traffic is not None and traffic.poll() is not None
        loop.event("traffic ended" if ended else "enough candidates" if loop.enough()
                   else "time up")
        if ended:  # what the last sessions allow, in the time left
            time.sleep(cfg.poll)
            loop.read_sessions()
            while len(loop.pool) >= loop.wanted and time.monotonic() < deadline \
                    and not loop.enough():
                loop.candidate()
    finally:
        _stop(traffic)
        _stop(gateway)  # it writes every open session as it stops
        loop.read_sessions()
        loop.event("end", counts=loop.counts, live=loop.live)
        loop.events.close()
        from .online_report import write_report

        report = write_report(out)  # also after a stop: what the run did so far
    return report


@tool_command("tracewheel.online")
@click.option("--report-only", "report_only", type=click.Path(exists=True, file_okay=False),
              metavar="OUT", help="Write OUT/report.md from a run's files, and stop.")
@click.option("--server", envvar="OPENAI_BASE_URL", show_envvar=True,
              metavar="URL", help="The running vLLM's URL, with LoRA adapters enabled (what "
                                  "`python -m tracewheel.vllm --lora-rank R --exec` sets).")
@click.option("--base", metavar="DIR",
              help="The live model's directory (what the server serves; adapters train on it).")
@click.option("--gate-set", type=click.Path(exists=True, dir_okay=False),
              help="Labelled tasks (JSONL) every candidate and the live model are scored on.")
@click.option("--workflow", "-w", default=OnlineConfig.workflow, show_default=True)
@click.option("--gate-reward", metavar="boxed|FILE.py:FN|workflow",
              default=OnlineConfig.gate_reward, show_default=True,
              help="How the gate set's rollouts are graded (rollout --reward); workflow: the "
                   "workflow's own reward_info.match.")
@click.option("--out", default=OnlineConfig.out, show_default=True,
              help="The run's folder: online.jsonl, sessions.jsonl, report.md, cand-N/.")
@click.option("--traffic", metavar="COMMAND",
              help="Run beside the loop, with $TRACEWHEEL_GATEWAY the gateway's URL.")
@click.option("--batch", type=click.IntRange(1), default=OnlineConfig.batch, show_default=True,
              help="Rewarded sessions a candidate needs (since the live model went live).")
@click.option("--lora-r", type=click.IntRange(1), default=OnlineConfig.lora_r,
              show_default=True)
@click.option("--train-threads", type=click.IntRange(0), default=OnlineConfig.train_threads,
              show_default=True,
              help="train's CPU threads (OMP_NUM_THREADS); 0: half the cores. Training with "
                   "every core beside a busy vLLM on CPU ran 5 to 100 times slower.")
@click.option("--train-args", default=OnlineConfig.train_args, show_default=True,
              help="train's options for each candidate.")
@click.option("--rule", type=click.Choice(RULES), default=OnlineConfig.rule, show_default=True)
@click.option("--margin", type=click.FloatRange(0, 1), default=OnlineConfig.margin,
              show_default=True)
@click.option("--gate-jobs", type=click.IntRange(1), default=OnlineConfig.gate_jobs,
              show_default=True)
@click.option("--max-tokens", type=click.IntRange(1), default=OnlineConfig.max_tokens,
              show_default=True)
@click.option("--duration", type=click.FloatRange(0), default=OnlineConfig.duration,
              show_default=True, help="Seconds the loop runs.")
@click.option("--idle-timeout", type=click.FloatRange(0, min_open=True),
              default=OnlineConfig.idle_timeout, show_default=True)
@click.option("--max-candidates", type=click.IntRange(0), default=OnlineConfig.max_candidates,
              show_default=True, help="Stop after this many candidates (0: at --duration).")
@click.option("--poll", type=click.FloatRange(0, min_open=True), default=OnlineConfig.poll,
              show_default=True, help="Seconds between reads of the sessions file.")
@click.option("--seed", type=int, default=OnlineConfig.seed, show_default=True)
@click.option("--invert", type=click.IntRange(1), multiple=True,
              help="Train candidate N on inverted rewards (a bad model, for the gate).")
@click.pass_context
def command(ctx: click.Context, report_only: str | None, **options: object) -> None:
    """The online loop: the gateway in front of --server, candidates trained on its sessions,
    gated on --gate-set, promoted when better."""
    if report_only:
        from .online_report import write_report

        click.echo(write_report(Path(report_only)).read_text())
        return
    for name in ("server", "base", "gate_set"):
        if not options[name]:
            raise click.UsageError(f"Missing option '--{name.replace('_', '-')}'.", ctx)
    options["invert"] = tuple(options["invert"])  # type: ignore[arg-type]
    options["server"] = str(options["server"]).rstrip("/").removesuffix("/v1")
    report = online(OnlineConfig(**options))  # type: ignore[arg-type]
    click.echo(report.read_text())


def main(argv: list[str] | None = None) -> int:
    return exit_status(command, argv, "python -m tracewheel.online")


if __name__ == "__main__":
    sys.exit(main())
