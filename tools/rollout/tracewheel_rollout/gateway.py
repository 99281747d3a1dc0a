"""The production gateway: the recording proxy in front of the serving vLLM, keeping
conversations as sessions and writing each ended session as a rollout record (the record
ctx-merge reads), with the rewards and feedback its client or its users gave.

A call belongs to a session, found in this order:
  the path             /s/<session>/v1 (and /s/<session>/agent/<name>/v1), as `rollout run`
  the header           X-Session-Id: <session> (OpenClaw-RL; X-Turn-Type: side marks a turn
                       that is not the agent's own, X-Session-Done: true ends the session
                       with that call)
  the key              Authorization: Bearer <key>, the key POST /rl/start_session returned
                       (AReaL's online mode); it never goes upstream, and no record holds it
A call with none of these is a session of its own, written at once and counted: none is
dropped.

The feedback API (JSON bodies; AReaL's names, Trinity-RFT's /feedback):
  POST /rl/start_session   {task_id?, reference?, metadata?} -> {session_id, api_key}
  POST /rl/set_reward      {session_id | completion_id, reward}: a session's reward, or one
                           call's (the chat completion's "id" its client got back)
  POST /rl/feedback        {session_id, thumbs?: "up"|"down", text?}: a user's feedback
                           (also POST /feedback)
  POST /rl/end_session     {session_id}: the session is written now
A session also ends when it has had no call for --idle-timeout seconds, and every open session
is written when the gateway stops.

With --live MODEL, every call goes to the served model MODEL, whatever model its client named,
and each call records the model that answered it (``policy``). Promotion switches that model:
  POST /rl/promote         {model}: calls from now on go to it (one the upstream does not serve
                           is refused, 404, and the live model stays); calls in flight finish
                           on the model they started on, so no request fails in a swap
  GET  /rl/live            {model, promotions}: the live model and every switch so far
A rollback is a promotion of an earlier model (a LoRA adapter stays loaded under its name).

The reward of a session: the last reward its client set for the session; else the mean of the
rewards set for its calls; else the reward function (--reward); else none, and the session is
written and counted, not trained on (train skips a rollout without a reward).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tracewheel.cli import Summary
from tracewheel.jsonl import loads
from tracewheel.messages import content_text

from .recorder import CALL_EXTRA
from .rewards import RewardFn
from .runner import CALL_FIELDS
from .upstream import bearer, error_reply

SESSION_HEADER = "X-Session-Id"
TURN_HEADER = "X-Turn-Type"
DONE_HEADER = "X-Session-Done"
FAILED_FIELDS = ("id", "index", "agent", "error", "time", "upstream_retries")
FEEDBACK_REWARD = f"{__name__}:feedback_reward"  # what --reward feedback loads
ENDED_KEPT = 100_000  # ids of ended sessions remembered, to tell a late call from a new one


@dataclass
class Session:
    id: str
    task_id: str | None = None
    reference: str | None = None
    metadata: dict = field(default_factory=dict)
    calls: list[dict] = field(default_factory=list)
    reward: float | None = None  # set by its client for the whole session
    call_rewards: dict[str, float] = field(default_factory=dict)  # by completion id
    feedback: list[dict] = field(default_factory=list)
    started: str = field(default_factory=lambda: _now())
    last: float = field(default_factory=time.monotonic)


def feedback_reward(task: dict, rollout: dict) -> tuple[float | None, dict]:
    """``--reward feedback``: the session's last thumbs, up 1.0 and down 0.0; none without."""
    thumbs = [f["thumbs"] for f in (rollout.get("metadata") or {}).get("feedback") or []
              if f.get("thumbs")]
    if not thumbs:
        return None, {"method": "feedback", "reason": "no thumbs in the session"}
    return (1.0 if thumbs[-1] == "up" else 0.0), {"method": "feedback", "thumbs": thumbs[-1]}


class Gateway:
    """Sessions over the recorder's calls. Everything runs on the recorder's event loop
    (``on_call``, the API handlers, the idle reaper), so no lock is needed; ``write`` gets
    each ended session's record there."""

    def __init__(self, write: Callable[[dict], None], summary: Summary, *,
                 idle_timeout: float, reward: RewardFn | None = None):
        self.write = write
        self.summary = summary
        self.idle_timeout = idle_timeout
        self.reward = reward
        self.sessions: dict[str, Session] = {}
        self.keys: dict[str, str] = {}  # per-session API key -> session id
        self.by_completion: dict[str, str] = {}  # completion id -> open session id
        self.ended: dict[str, None] = {}  # ordered set of ended session ids
        self._reaper: asyncio.Task | None = None
        self._writing: set[asyncio.Task] = set()  # sessions ended, their records not yet out
        self.recorder: Any = None  # set by whoever built the recorder with these hooks
        self.promotions: list[dict] = []

    # --- the recorder's hooks ---------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        for path, handler in (("/rl/start_session", self._start_session),
                              ("/rl/set_reward", self._set_reward),
                              ("/rl/feedback", self._feedback), ("/feedback", self._feedback),
                              ("/rl/end_session", self._end_session),
                              ("/rl/promote", self._promote)):
            app.router.add_post(path, handler)
        app.router.add_get("/rl/live", self._live)
        app.on_startup.append(self._start_reaper)
        app.on_cleanup.append(self._stop_reaper)

    def session(self, request: web.Request, from_path: str) -> str:
        """The session of a request (see the module docstring); the fields its call gets go
        under CALL_EXTRA."""
        extra: dict[str, Any] = {}
        session = None if from_path == "default" else from_path
        session = session or request.headers.get(SESSION_HEADER)
        key = bearer(request.headers)
        if session is None and key in self.keys:
            session = self.keys[key]
        if key in self.keys:
            extra["own_key"] = True  # the gateway's key: not sent upstream
        if request.headers.get(TURN_HEADER, "main").lower() == "side":
            extra["turn_type"] = "side"
        if request.headers.get(DONE_HEADER, "").lower() in ("1", "true", "yes"):
            extra["session_done"] = True
        if session is None:
            session = f"call-{uuid.uuid4().hex}"
            extra["sessionless"] = True
        request[CALL_EXTRA] = extra
        return session

    def on_call(self, call: dict) -> None:
        sid = call["session"]
        if call.get("sessionless"):
            self.summary.add("calls without a session")
        elif sid in self.ended:
            self.summary.add("calls after their session ended")
            call["late"] = True
        if call.get("sessionless") or sid in self.ended:
            # written now as a session of its own: a record for every call that came
            s = Session(sid, metadata={"late": True} if call.get("late") else {})
            s.calls.append(call)
            self._spawn(self._finish(s, "alone"))
            return
        s = self.sessions.get(sid) or self.sessions.setdefault(sid, Session(sid))
        s.calls.append(call)
        s.last = time.monotonic()
        if call.get("completion_id"):
            self.by_completion[call["completion_id"]] = sid
        if call.get("session_done"):
            self._end(sid, "client")

    # --- the API ----------------------------------------------------------------------------

    async def _start_session(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        sid = str(body.get("session_id") or uuid.uuid4().hex)
        if sid in self.sessions or sid in self.ended:
            return error_reply(409, f"session {sid!r} exists already")
        key = f"tw-{secrets.token_urlsafe(24)}"
        self.keys[key] = sid
        reference = body.get("reference")
        self.sessions[sid] = Session(
            sid, task_id=body.get("task_id"),
            reference=None if reference is None else str(reference),
            metadata=body.get("metadata") if isinstance(body.get("metadata"), dict) else {})
        self.summary.add("sessions started")
        return web.json_response({"session_id": sid, "api_key": key})

    async def _set_reward(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        reward = body.get("reward")
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            return error_reply(400, "reward must be a number")
        if body.get("completion_id") is not None:
            cid = str(body["completion_id"])
            sid = self.by_completion.get(cid)
            if sid is None or sid not in self.sessions:
                return error_reply(404, f"no open session has the completion {cid!r}")
            self.sessions[sid].call_rewards[cid] = float(reward)
            return web.json_response({"ok": True, "session_id": sid})
        s = self._open(body)
        if isinstance(s, web.Response):
            return s
        s.reward = float(reward)
        return web.json_response({"ok": True, "session_id": s.id})

    async def _feedback(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        thumbs, text = body.get("thumbs"), body.get("text")
        if thumbs not in (None, "up", "down"):
            return error_reply(400, "thumbs must be \"up\" or \"down\"")
        if thumbs is None and not isinstance(text, str):
            return error_reply(400, "feedback needs thumbs or text")
        s = self._open(body)
        if isinstance(s, web.Response):
            return s
        s.feedback.append({k: v for k, v in (("thumbs", thumbs), ("text", text))
                           if v is not None})
        self.summary.add("feedback")
        return web.json_response({"ok": True, "session_id": s.id})

    async def _end_session(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        s = self._open(body)
        if isinstance(s, web.Response):
            return s
        calls = len(s.calls)
        await self._end(s.id, "client")
        return web.json_response({"ok": True, "session_id": s.id, "calls": calls})

    async def _promote(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        model = body.get("model")
        if self.recorder is None or self.recorder.policies is None:
            return error_reply(400, "this gateway has no live model to switch (start it with "
                                    "--live)")
        if not isinstance(model, str) or not model:
            return error_reply(400, "give model: the served model to promote")
        served = await self._served_models()
        if model not in served:
            return error_reply(404, f"the upstream does not serve {model!r} (it serves "
                               f"{', '.join(sorted(served)) or 'nothing'}): the live model "
                               f"stays {self.recorder.default_policy!r}")
        before = self.recorder.default_policy
        self.recorder.default_policy = model
        self.promotions.append({"model": model, "before": before, "time": _now()})
        self.summary.add("promotions")
        return web.json_response({"ok": True, "model": model, "before": before})

    async def _live(self, request: web.Request) -> web.Response:
        live = self.recorder.default_policy if self.recorder is not None else None
        return web.json_response({"model": live, "promotions": self.promotions})

    async def _served_models(self) -> set[str]:
        return {str(m.get("id")) for m in await self.recorder.upstream.models()}

    def _open(self, body: dict) -> Session | web.Response:
        sid = body.get("session_id")
        if sid is None:
            return error_reply(400, "give session_id")
        sid = str(sid)
        if sid in self.ended:
            return error_reply(409, f"session {sid!r} has ended")
        if sid not in self.sessions:
            return error_reply(404, f"no session {sid!r}: start one with /rl/start_session, or "
                               f"send its first call with {SESSION_HEADER}")
        return self.sessions[sid]

    # --- ending sessions --------------------------------------------------------------------

    def _end(self, sid: str, how: str) -> asyncio.Task:
        s = self.sessions.pop(sid)
        self.ended[sid] = None
        while len(self.ended) > ENDED_KEPT:
            self.ended.pop(next(iter(self.ended)))
        for key in [k for k, v in self.keys.items() if v == sid]:
            del self.keys[key]
        for call in s.calls:
            self.by_completion.pop(call.get("completion_id"), None)
        return self._spawn(self._finish(s, how))

    def _spawn(self, work: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(work)
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)
        return task

    async def _finish(self, s: Session, how: str) -> None:
        record = session_record(s, how)
        await self._score(s, record)
        self.write(record)
        self.summary.add("sessions")
        self.summary.add("with a reward" if record["reward"] is not None else "without a reward")

    async def _score(self, s: Session, record: dict) -> None:
        if s.reward is not None:
            record["reward"], record["reward_info"] = s.reward, {"method": "client"}
        elif s.call_rewards:
            record["reward"] = statistics.fmean(s.call_rewards.values())
            record["reward_info"] = {"method": "client, per call (their mean)"}
        elif self.reward is not None and record["calls"]:
            task = {"id": record["task_id"], "query": record["query"],
                    "reference": record["reference"]}
            try:
                record["reward"], record["reward_info"] = await self.reward(task, record)
            except Exception as err:  # the reward's failure is the session's, not the gateway's
                record["reward_info"] = {"error": f"the reward failed: "
                                                  f"{type(err).__name__}: {err}"[:500]}

    def end_all(self) -> None:
        """Write every open session (the gateway stops): run on a loop of its own, after the
        recorder's has ended."""
        async def finish() -> None:
            for sid in list(self.sessions):
                await self._finish(self.sessions.pop(sid), "stopped")

        asyncio.run(finish())

    async def _start_reaper(self, app: web.Application) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _stop_reaper(self, app: web.Application) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self._writing:  # the records of sessions that ended just before the stop
            await asyncio.gather(*self._writing, return_exceptions=True)

    async def _reap(self) -> None:
        every = min(max(self.idle_timeout / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for sid in [sid for sid, s in self.sessions.items()
                        if now - s.last > self.idle_timeout]:
                self.summary.add("ended idle")
                self._end(sid, "idle")


def session_record(s: Session, how: str) -> dict:
    """A session as the rollout record ctx-merge reads: its agent's calls (side turns counted,
    not trained on), its feedback, and how it ended."""
    main = [c for c in s.calls if c.get("turn_type") != "side"]
    ok = [c for c in main if c.get("status") == "ok"]
    query = next((content_text(m.get("content")) for c in ok[:1]
                  for m in c.get("messages") or [] if m.get("role") == "user"), None)
    final = content_text((ok[-1].get("output") or {}).get("content")) if ok else None
    return {
        "id": s.id, "task_id": s.task_id or s.id, "group": s.task_id or s.id, "sample": 0,
        "query": query, "reference": s.reference,
        "calls": [{k: c.get(k) for k in CALL_FIELDS} for c in ok],
        "failed_calls": [{k: c.get(k) for k in FAILED_FIELDS} for c in main
                         if c.get("status") != "ok"],
        "final": final, "reward": None, "reward_info": None,
        "metadata": {**s.metadata, "session": {
            "started": s.started, "ended": how, "side_calls": len(s.calls) - len(main)},
            "feedback": s.feedback, "call_rewards": s.call_rewards or None},
        "agent_rewards": None, "status": "ok", "error": None,
    }


async def _body(request: web.Request) -> dict | web.Response:
    try:
        body = loads(await request.read())
    except ValueError:
        return error_reply(400, "request body is not JSON")
    if not isinstance(body, dict):
        return error_reply(400, "request body must be a JSON object")
    return body


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
