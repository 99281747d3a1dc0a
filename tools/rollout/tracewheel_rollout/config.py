"""rollout's settings: what `rollout run` and `rollout record` are asked to do, as dataclasses
with their defaults, stated once (the command line fills them, named as its options; tests and
other code build them directly)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracewheel.client import RETRIES, TIMEOUT
from tracewheel.models import MAX_MODEL_LEN

CONTINUATION = ("auto", "on", "off")  # rollout --continuation


@dataclass
class RunConfig:
    """What `rollout run` is asked to do; its options, named as on the command line."""

    workflow: str
    per_task: int = 1                  # rollouts per task (a GRPO group)
    top_up: int = 0                    # more rollouts, at most, for a group whose rewards tie
    jobs: int = 8                      # rollouts in flight at once
    rollout_timeout: float = 600.0
    base_url: str | None = None        # a running vLLM; else one is served for the run
    model: str | None = None
    api_key: str | None = None
    timeout: float = TIMEOUT
    retries: int = RETRIES
    serve: str | None = None           # the model to serve (default: the embedded model)
    max_model_len: int = MAX_MODEL_LEN
    temperature: float = 1.0
    top_p: float | None = None
    max_tokens: int = 512
    seed: int | None = None
    reward_kind: str | None = None     # boxed, judge, or FILE.py:FN
    rubrics: str | None = None
    judge_base_url: str | None = None
    judge_model: str | None = None
    judge_api_key: str | None = None
    ray_address: str | None = None
    ray_cpus: float = 0.25
    record_host: str = "127.0.0.1"
    record_port: int = 0
    continuation: str = "auto"         # see the recorder
    chat_template: str | None = None
    unordered: bool = False
    policy: tuple[str, ...] = ()       # AGENT=POLICY entries: each agent's served model
    default_policy: str | None = None  # the policy of agents outside the map

    def sampling(self) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.top_p is not None:
            out["top_p"] = self.top_p
        return out


@dataclass
class RecordConfig:
    """What `rollout record` is asked to do; its options, named as on the command line."""

    upstream: str = ""                 # the vLLM recorded, e.g. http://127.0.0.1:8000/v1
    host: str = "127.0.0.1"            # where the proxy listens (0.0.0.0: every interface)
    port: int = 8100
    api_key: str | None = None         # sent upstream instead of the client's
    retries: int = 3                   # of upstream 429, 5xx and connection failures
    timeout: float = 600.0             # seconds to wait for upstream data
    continuation: str = "auto"         # see the recorder
    chat_template: str | None = None


@dataclass
class GatewayConfig(RecordConfig):
    """What `rollout gateway` is asked to do: the recording proxy's options, and the sessions'."""

    idle_timeout: float = 600.0        # a session without a call this long ends
    live: str | None = None            # the served model every call goes to (POST /rl/promote)
    reward: str | None = None          # feedback, or FILE.py:FN; None: only the client's
