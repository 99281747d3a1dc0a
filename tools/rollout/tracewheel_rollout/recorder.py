"""The recording endpoint: an OpenAI-compatible HTTP proxy in front of vLLM that keeps the
token ids and logprobs of every chat completion. A request that continues an earlier call of
its session is sent to vLLM as token ids (``continuation.py``), and its reply turned back into
a chat completion (``completions.py``). The upstream, with its retries and weight versions, is
``upstream.py``; starting and stopping, ``service.py``.

Each rollout gets its own base URL, ``http://HOST:PORT/s/<session>/v1`` (and, to name the
agent that calls, ``/s/<session>/agent/<name>/v1``); plain ``/v1`` is the session ``default``.
A chat completion is forwarded upstream with ``logprobs`` and vLLM's ``return_token_ids`` turned
on; the call is recorded (request messages, tools, sampling parameters; prompt ids, completion
ids, one logprob per completion token, the assistant message, finish reason, latency), and the
agent gets back an ordinary response: what it did not ask for is taken out again. Streaming
requests are passed through event by event and recorded when they end. Any other request
(``GET /v1/models``, ...) is passed through unrecorded.

A call is handed to ``on_call`` before its response is finished, so by the time an agent's
request returns, its record exists. Transient upstream failures (connection errors, 429, 5xx)
are retried with backoff before the agent sees them; a call that still fails goes to
``on_call`` with ``status: "error"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from array import array
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from tracewheel.chat_template import server_tools, template_text
from tracewheel.client import redact
from tracewheel.errors import TracewheelError
from tracewheel.ids import stable_id
from tracewheel.jsonl import dumps_bytes, loads

from .completions import (
    ChoiceStream,
    StreamedChoice,
    assistant_message,
    chat_chunks,
    chat_id,
    chat_logprobs,
    completions_logprobs,
    envelope,
    finish,
    plain_message,
    relay_chat_chunk,
    strip_choice,
    strip_reply,
)
from .config import CONTINUATION, RecordConfig
from .continuation import Continuation, FinishedCall, Plan, parses_tools, tools_key
from .service import SHUTDOWN_GRACE, Service
from .upstream import Upstream, bearer, error_reply

_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                "content-encoding", "authorization"}
# Where the gateway's hooks leave the fields of a request's call (gateway.py).
CALL_EXTRA = "tracewheel.call_fields"
# Request keys that are the conversation, not sampling parameters.
_NOT_PARAMS = {"messages", "tools", "model", "stream", "stream_options", "logprobs",
               "return_token_ids"}


def split_path(path: str) -> tuple[str, str | None, str]:
    """``/s/<session>[/agent/<name>]/v1/...`` -> (session, agent, ``/v1/...``)."""
    parts = path.lstrip("/").split("/")
    session, agent = "default", None
    if len(parts) >= 2 and parts[0] == "s":
        session, parts = parts[1], parts[2:]
        if len(parts) >= 2 and parts[0] == "agent":
            agent, parts = parts[1], parts[2:]
    return session, agent, "/" + "/".join(parts)


class Recorder(Service):
    """The proxy, in a thread of its own: ``start()``, ``base_url(session, agent)``, ``stop()``
    (or ``serve_forever()`` in the main thread).

    ``on_call(call)`` runs on the proxy's thread for every chat completion (one call per
    choice); it must be quick and thread-safe.
    """

    def __init__(self, upstream: str, *, on_call: Callable[[dict], None],
                 host: str = RecordConfig.host, port: int = 0, api_key: str | None = None,
                 retries: int = RecordConfig.retries, timeout: float = RecordConfig.timeout,
                 continuation: str = RecordConfig.continuation,
                 chat_template: str | None = None, weight_version: str | None = None,
                 policies: dict[str, str] | None = None, default_policy: str | None = None,
                 policy_versions: dict[str, str] | None = None, hooks: Any = None):
        self.upstream = Upstream(upstream, api_key=api_key, retries=retries, timeout=timeout,
                                 weight_version=weight_version)
        self.on_call = on_call
        # Multi-agent: the served model (a LoRA adapter per policy) each agent's calls go to,
        # whatever model the agent named; an agent outside the map gets default_policy, or its
        # calls fail. policy_versions: each policy's version (its adapter's path).
        self.policies = policies
        self.default_policy = default_policy
        self.policy_versions = policy_versions or {}
        # The gateway (gateway.py): its routes, and the session of each request (by header or
        # key as well as by path), with fields for the call under CALL_EXTRA.
        self.hooks = hooks
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None
        self._counter = 0
        self._lock = threading.Lock()
        if continuation not in CONTINUATION:
            raise ValueError(f"continuation must be one of {CONTINUATION}")
        self.continuation_mode = continuation
        self.chat_template = chat_template
        self.continuation: Continuation | None = None
        # Why continuation is off in auto mode; the command says it after where it records.
        self.continuation_off: str | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def _start(self) -> None:
        await self.upstream.open()
        app = web.Application(client_max_size=256 * 2**20)
        if self.hooks is not None:
            self.hooks.add_routes(app)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # On stop, requests still waiting on the upstream get SHUTDOWN_GRACE seconds, then are
        # cancelled (aiohttp's default waits 60 s: a Ctrl-C that seems to hang).
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=SHUTDOWN_GRACE)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self.continuation_mode != "off":
            await self._setup_continuation()

    async def _setup_continuation(self) -> None:
        """Continue calls as token ids where the upstream is vLLM and its tokenizer loads; where
        not, say why in one line (auto) or fail (on)."""
        model = next(iter(await self.upstream.models()), {})
        why = None
        if model.get("owned_by") != "vllm":
            why = f"the upstream {self.upstream.url} does not say it is vLLM (GET /v1/models)"
        else:
            try:
                tokenizer = await asyncio.to_thread(_tokenizer_of, model)
                template = template_text(self.chat_template)
            except TracewheelError as err:
                why = err.message
            else:
                self.continuation = Continuation(tokenizer, template,
                                                 model.get("max_model_len"))
        if why is None:
            return
        if self.continuation_mode == "on":
            raise TracewheelError(f"cannot continue calls as token ids: {why}")
        self.continuation_off = why

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.upstream.close()

    def base_url(self, session: str = "default", agent: str | None = None) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        root = f"http://{host}:{self.port}"
        if session == "default" and agent is None:
            return root + "/v1"
        return f"{root}/s/{session}" + (f"/agent/{agent}" if agent else "") + "/v1"

    # --- requests ---------------------------------------------------------------------------

    def forget(self, session: str) -> None:
        """The session ended: its calls will not be continued (thread-safe)."""
        if self.continuation is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.continuation.forget, session)

    def _headers(self, request: web.Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        key = self.upstream.api_key
        if key is None:
            auth = request.headers.get("Authorization")
            if auth and not request.get(CALL_EXTRA, {}).get("own_key"):
                headers["Authorization"] = auth
        else:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            await request.read()  # kept by aiohttp for the handlers' own read()
        except ConnectionResetError:
            # The client hung up before its request arrived (an agent stopped with its rollout,
            # `rollout | head -1`): no call to record, nobody to answer, nothing to log.
            return web.Response(status=499)
        session, agent, path = split_path(request.path)
        if self.hooks is not None:
            session = self.hooks.session(request, session)
        if request.method == "POST" and path == "/v1/chat/completions":
            return await self._chat(request, session, agent)
        return await self.upstream.passthrough(request, path, self._headers(request))

    def _start_call(self, session: str, agent: str | None, body: dict,
                    extra: dict | None = None) -> dict:
        with self._lock:
            self._counter += 1
            index = self._counter
        return {**(extra or {}),
            "session": session, "agent": agent, "index": index,
            "messages": body.get("messages") or [], "tools": body.get("tools"),
            "params": {k: v for k, v in body.items() if k not in _NOT_PARAMS},
            "stream": bool(body.get("stream")),
            "weight_version": self.upstream.weight_version,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "_started": time.monotonic(),
        }

    def _finish(self, call: dict, **fields: Any) -> None:
        call.update(fields)
        call["latency_ms"] = round((time.monotonic() - call.pop("_started")) * 1000, 3)
        # The same call is the same id; another call (another proxy run, other content) is
        # another id, although every run counts its calls from 1 in the default session.
        call["id"] = stable_id(call["session"], call["index"], call.get("choice", 0),
                               call["messages"], call["params"], call.get("completion_ids"),
                               call.get("output"), call.get("error"), prefix="call-")
        if self.continuation is not None and call.get("status") == "ok":
            continuable = call["tokens"] == "continued"
            if not continuable:
                continuable = self.continuation.agrees(call, call["prompt_ids"])
                if not continuable and not self.continuation.template_disagrees:
                    self.continuation.template_disagrees = True
                    print("recorder: the upstream renders chat prompts differently from the "
                          "recorder's chat template (--chat-template); calls that follow "
                          "such a call are rendered, not continued", file=sys.stderr)
            self.continuation.add(call["session"], call["agent"], FinishedCall(
                call["id"], call["messages"], tools_key(server_tools(call["tools"])),
                call["output"], array("l", call["prompt_ids"]),
                array("l", call["completion_ids"]), continuable))
        self.on_call(call)

    async def _chat(self, request: web.Request, session: str,
                    agent: str | None) -> web.StreamResponse:
        try:
            body = loads(await request.read())
        except ValueError:
            return error_reply(400, "request body is not JSON")
        if not isinstance(body, dict):
            return error_reply(400, "request body must be a JSON object")
        policy = self._policy(agent)
        extra = {k: v for k, v in request.get(CALL_EXTRA, {}).items() if k != "own_key"}
        if self.policies is not None and policy is None:
            call = self._start_call(session, agent, body, extra)
            message = (f"agent {agent!r} is not in the policy map (it names "
                       f"{', '.join(sorted(self.policies))}) and there is no default policy")
            self._finish(call, status="error", error=message)
            return error_reply(400, message)
        if policy is not None:
            body = {**body, "model": policy}
        call = self._start_call(session, agent, body, extra)
        if policy is not None:
            call.update(policy=policy, policy_version=self.policy_versions.get(policy))
        plan, upstream_body, path = self._plan(call, session, agent, body)
        headers = self._headers(request)
        try:
            resp, reply = await self.upstream.post_versioned(call, upstream_body, headers, path)
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            message = f"upstream {self.upstream.url} unreachable: {type(err).__name__}"
            self._finish(call, status="error", error=message)
            return error_reply(502, message)
        # An upstream may echo the key it was sent (OpenAI's 401 does): no error text, record
        # or relayed body carries it, nor the key the client sent.
        secrets = (self.upstream.api_key, bearer(headers), bearer(request.headers))
        try:
            if resp.status != 200:
                data = redact((await resp.read()).decode("utf-8", "replace"), *secrets)
                self._finish(call, status="error", error=f"HTTP {resp.status}: {data[:500]}")
                return web.Response(text=data, status=resp.status,
                                    content_type=resp.content_type)
            if body.get("stream"):
                return await self._stream(request, resp, call, body, plan.prompt_ids)
        finally:
            resp.release()
        if reply is None:
            message = (f"upstream {self.upstream.url} answered 200 with a body that is not a "
                       f"JSON object ({self.upstream.retries} retries)")
            self._finish(call, status="error", error=message)
            return error_reply(502, message)
        return self._answer(call, body, plan.prompt_ids, reply)

    def _plan(self, call: dict, session: str, agent: str | None, body: dict
              ) -> tuple[Plan, dict, str]:
        """How the call goes upstream: continued as token ids (completions), or rendered by
        the upstream (chat completions, asked for the ids and logprobs)."""
        plan, continuation = Plan(), self.continuation
        if continuation is not None:
            plan = continuation.plan(session, agent, body)
            if plan.prompt_ids is not None:
                call.update(tokens="continued", continues=plan.continues, drift=plan.drift)
                return plan, continuation.completion_body(body, plan.prompt_ids), \
                    "/v1/completions"
        call.update(tokens="rendered", tokens_reason=plan.reason)
        return plan, {**body, "logprobs": True, "return_token_ids": True}, "/v1/chat/completions"

    def _answer(self, call: dict, body: dict, continued: list[int] | None,
                reply: dict) -> web.Response:
        """The agent's answer to an upstream's 200: each choice recorded, and what the agent
        did not ask for taken out again."""
        call["completion_id"] = chat_id(reply.get("id"), continued is not None)
        if continued is not None:
            reply = self._chat_reply(call, body, continued, reply)
        else:
            self._record_reply(call, reply)
        for choice in reply.get("choices") or []:
            strip_choice(choice, bool(body.get("logprobs")), bool(body.get("return_token_ids")))
        strip_reply(reply, bool(body.get("return_token_ids")))
        return web.Response(body=dumps_bytes(reply), content_type="application/json")

    def _policy(self, agent: str | None) -> str | None:
        if self.policies is None:
            return None
        return self.policies.get(agent or "") or self.default_policy

    def _record_reply(self, call: dict, reply: dict) -> None:
        """Record each choice of a chat completion."""
        prompt_ids = reply.get("prompt_token_ids") or []
        for choice in reply.get("choices") or []:
            self._record_choice(call, choice.get("index", 0), prompt_ids,
                                choice.get("token_ids") or [],
                                [t["logprob"] for t in
                                 ((choice.get("logprobs") or {}).get("content") or [])],
                                plain_message(choice.get("message") or {}),
                                choice.get("finish_reason"),
                                reply.get("model"), reply.get("usage"))

    def _chat_reply(self, call: dict, body: dict, prompt_ids: list[int], reply: dict) -> dict:
        """Record each choice of a completions reply, and make it the chat reply asked for."""
        out = envelope(call.get("completion_id") or "", reply.get("model"), reply.get("created"),
                       "chat.completion")
        out.update(choices=[], usage=reply.get("usage"), prompt_token_ids=prompt_ids)
        for choice in reply.get("choices") or []:
            message, called = assistant_message(choice.get("text") or "", parses_tools(body))
            reason = finish(choice.get("finish_reason"), called)
            ids = choice.get("token_ids") or []
            self._record_choice(call, choice.get("index", 0),
                                choice.get("prompt_token_ids") or prompt_ids, ids,
                                completions_logprobs(choice.get("logprobs")),
                                plain_message(message),
                                reason, reply.get("model"), reply.get("usage"))
            out["choices"].append({"index": choice.get("index", 0), "message": message,
                                   "logprobs": chat_logprobs(choice.get("logprobs")),
                                   "finish_reason": reason,
                                   "stop_reason": choice.get("stop_reason"), "token_ids": ids})
        return out

    def _record_choice(self, call: dict, index: int, prompt_ids: list[int],
                       completion_ids: list[int], logprobs: list[float], output: dict,
                       finish_reason: str | None, model: str | None,
                       usage: dict | None) -> None:
        status, error = "ok", None
        if not prompt_ids or len(logprobs) != len(completion_ids):
            status = "error"
            error = (f"upstream returned {len(prompt_ids)} prompt ids, "
                     f"{len(completion_ids)} completion ids and {len(logprobs)} logprobs: "
                     f"is it vLLM (return_token_ids needs vLLM 0.10.2 or later)?")
        self._finish(dict(call, _started=call["_started"]), choice=index,
                     prompt_ids=prompt_ids, completion_ids=completion_ids, logprobs=logprobs,
                     output=output, finish_reason=finish_reason, model=model, usage=usage,
                     status=status, error=error)

    async def _stream(self, request: web.Request, resp: aiohttp.ClientResponse, call: dict,
                      body: dict, continued: list[int] | None) -> web.StreamResponse:
        """Pass a stream on event by event (a continued call's completions chunks as chat
        chunks), and record each choice when it ends."""
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                          "Cache-Control": "no-cache"})
        await out.prepare(request)
        choices: dict[int, StreamedChoice] = {}
        streams: dict[int, ChoiceStream] = {}
        prompt_ids: list[int] = continued or []
        model = usage = None
        buffer = b""
        done = False
        try:
            async for block in resp.content.iter_any():
                buffer += block
                *events, buffer = buffer.split(b"\n\n")
                outgoing = []  # the events of one block go out in one write
                for event in events:
                    data = event.removeprefix(b"data:").strip()
                    done = done or data == b"[DONE]"
                    if not data or data == b"[DONE]":
                        continue  # [DONE] goes out once the call is recorded
                    chunk = loads(data)
                    if "completion_id" not in call and chunk.get("id"):
                        call["completion_id"] = chat_id(chunk["id"], continued is not None)
                    if "error" in chunk and not chunk.get("choices"):
                        raise _StreamError(str((chunk["error"] or {}).get("message", "")))
                    model = chunk.get("model") or model
                    usage = chunk.get("usage") or usage
                    if continued is not None:
                        chunks = chat_chunks(chunk, streams, body, prompt_ids)
                    else:
                        prompt_ids = chunk.get("prompt_token_ids") or prompt_ids
                        chunks = relay_chat_chunk(chunk, choices, body)
                    outgoing += [b"data: " + dumps_bytes(c) + b"\n\n" for c in chunks]
                if outgoing:
                    await out.write(b"".join(outgoing))
            # A stream that ends cleanly but early (a proxy's timeout, a restart) is as cut off
            # as a broken one: without [DONE] and a finish_reason per choice it is not a reply.
            unfinished = sorted(i for i, c in [*choices.items(), *streams.items()]
                                if c.finish_reason is None)
            if not done or unfinished:
                raise _StreamError("it stopped before " + (
                    f"choice {unfinished[0]} finished" if unfinished else "[DONE]"))
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, _StreamError) as err:
            await self._stream_broke(out, call, err)
            return out
        await self.upstream.stream_version(call)
        for index, acc in sorted(choices.items()):
            self._record_choice(call, index, prompt_ids, acc.token_ids, acc.logprobs,
                                plain_message(acc.message()), acc.finish_reason, model, usage)
        for index, stream in sorted(streams.items()):
            message = stream.message or assistant_message(stream.text, stream.tools)[0]
            self._record_choice(call, index, prompt_ids, stream.token_ids, stream.logprobs,
                                plain_message(message), stream.finish_reason, model, usage)
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out

    async def _stream_broke(self, out: web.StreamResponse, call: dict,
                            err: BaseException) -> None:
        """A stream that broke: recorded, told in one line, and sent to the agent as vLLM
        reports an error in a stream (an error event, then the end): a proper failure, not a
        cut-off reply."""
        message = f"stream from {self.upstream.url} broke: {type(err).__name__}"
        if isinstance(err, _StreamError):
            message = f"stream from {self.upstream.url} ended with an error: {err}"[:1000]
        self._finish(call, status="error", error=message)
        print(f"recorder: session {call['session']}: {message}", file=sys.stderr)
        error = {"error": {"message": message, "type": "upstream_error", "code": 502}}
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await out.write(b"data: " + dumps_bytes(error) + b"\n\ndata: [DONE]\n\n")
            await out.write_eof()

class _StreamError(Exception):
    """The upstream sent an error event in the stream."""


def _tokenizer_of(model: dict) -> Any:
    """The tokenizer of the served model: its directory (``root``) where this machine has it,
    else its name (a model directory, or the embedded model)."""
    from tracewheel.chat_template import load_tokenizer

    names = [n for n in (model.get("root"), model.get("id")) if n]
    errors = []
    for name in names:
        try:
            return load_tokenizer(name)
        except TracewheelError as err:
            errors.append(err.message)
    raise TracewheelError(f"no tokenizer for the served model ({'; '.join(errors) or 'unnamed'})")
