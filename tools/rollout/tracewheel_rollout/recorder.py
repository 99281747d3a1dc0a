"""The recording endpoint: an OpenAI-compatible HTTP proxy in front of vLLM that keeps the
token ids and logprobs of every chat completion. A request that continues an earlier call of
its session is sent to vLLM as token ids (``continuation.py``), and its reply turned back into
a chat completion (``completions.py``).

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
import signal
import sys
import threading
import time
from array import array
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from tracewheel.chat_template import server_tools, template_text
from tracewheel.cli import Terminated
from tracewheel.client import RETRY_STATUS, redact, retry_delay
from tracewheel.errors import TracewheelError
from tracewheel.ids import stable_id
from tracewheel.jsonl import dumps_bytes, loads

from .completions import (
    ChoiceStream,
    assistant_message,
    chat_logprobs,
    completions_logprobs,
    envelope,
    finish,
)
from .config import RecordOptions
from .continuation import CONTINUATION, Continuation, FinishedCall, Plan, parses_tools, tools_key

# What return_token_ids fills in; vLLM sends these keys as null when not asked.
_ADDED = ("prompt_token_ids", "prompt_text")
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


class _Accumulator:
    """One choice of a streamed completion, put back together from its chunks."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.tool_calls: dict[int, dict] = {}
        self.finish_reason: str | None = None
        self.role = "assistant"

    def add(self, choice: dict) -> None:
        delta = choice.get("delta") or {}
        self.role = delta.get("role") or self.role
        if delta.get("content"):
            self.text.append(delta["content"])
        for call in delta.get("tool_calls") or []:
            slot = self.tool_calls.setdefault(call.get("index", 0), {
                "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            slot["id"] = call.get("id") or slot["id"]
            fn = call.get("function") or {}
            slot["function"]["name"] += fn.get("name") or ""
            slot["function"]["arguments"] += fn.get("arguments") or ""
        self.token_ids.extend(choice.get("token_ids") or [])
        self.logprobs.extend(t["logprob"] for t in
                             ((choice.get("logprobs") or {}).get("content") or []))
        self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def message(self) -> dict:
        out: dict[str, Any] = {"role": self.role, "content": "".join(self.text) or None}
        if self.tool_calls:
            out["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return out


def _plain(message: dict) -> dict:
    """The assistant message as the agent saw it, without the response's empty extras."""
    keep = {"role", "content", "tool_calls", "reasoning_content", "reasoning", "name"}
    return {k: v for k, v in message.items() if k in keep and v not in (None, [], "")} | {
        "content": message.get("content")}


class Recorder:
    """The proxy, in a thread of its own: ``start()``, ``base_url(session, agent)``, ``stop()``.

    ``on_call(call)`` runs on the proxy's thread for every chat completion (one call per
    choice); it must be quick and thread-safe.
    """

    def __init__(self, upstream: str, *, on_call: Callable[[dict], None],
                 host: str = RecordOptions.host, port: int = 0, api_key: str | None = None,
                 retries: int = RecordOptions.retries, timeout: float = RecordOptions.timeout,
                 continuation: str = RecordOptions.continuation,
                 chat_template: str | None = None, weight_version: str | None = None,
                 policies: dict[str, str] | None = None, default_policy: str | None = None,
                 policy_versions: dict[str, str] | None = None, hooks: Any = None):
        self.upstream = upstream.rstrip("/")
        if self.upstream.endswith("/v1"):
            self.upstream = self.upstream[:-3]
        self.on_call = on_call
        # The version of the weights serving the calls, where the upstream numbers them (vLLM's
        # /weight_info): then each call is marked with the version that served it (see
        # _post_versioned); else every call with this (None: unnumbered).
        self.weight_version = weight_version
        self.versioned = weight_version is not None
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
        self.api_key = api_key
        self.retries = retries
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
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

    def start(self) -> Recorder:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start())
            except BaseException as err:  # reported to start()'s caller
                failure.append(err)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="recorder", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    async def _start(self) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self.timeout),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
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
        assert self._http is not None
        model: dict = {}
        try:
            async with self._http.get(self.upstream + "/v1/models",
                                      headers=self._auth()) as resp:
                if resp.status == 200:
                    models = (await resp.json(content_type=None)).get("data") or []
                    model = models[0] if models and isinstance(models[0], dict) else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError):
            pass
        why = None
        if model.get("owned_by") != "vllm":
            why = f"the upstream {self.upstream} does not say it is vLLM (GET /v1/models)"
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

    def serve_forever(self, ready: Callable[[], None] = lambda: None) -> None:
        """Run in the calling (main) thread until SIGINT, SIGTERM or SIGHUP (``rollout
        record``), then raise KeyboardInterrupt or Terminated as the signal would have;
        ``ready()`` once it listens."""
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        # The signal stops the loop between callbacks, where a KeyboardInterrupt raised at any
        # point could leave aiohttp's shutdown waiting on a handler it broke (seen: a Ctrl-C
        # under load that hung for minutes). A second signal while stopping changes nothing.
        stopped_by: list[int] = []

        def on_signal(signum: int) -> None:
            if not stopped_by:
                stopped_by.append(signum)
                loop.stop()

        loop.run_until_complete(self._start())
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        ready()
        try:
            loop.run_forever()
        finally:
            stopped_by.append(0)  # from here on, signals are ignored until the stop is done
            # Bounded: requests in flight get SHUTDOWN_GRACE, then the process goes on to exit.
            stop = loop.create_task(self._stop())
            loop.run_until_complete(asyncio.wait({stop}, timeout=SHUTDOWN_GRACE + 5))
            for signum, handler in previous.items():
                loop.remove_signal_handler(signum)
                signal.signal(signum, handler)
            if not stop.done():
                print("rollout record: requests still in flight were left unfinished",
                      file=sys.stderr)
        if stopped_by[0] == signal.SIGINT:
            raise KeyboardInterrupt
        if stopped_by[0]:
            raise Terminated(stopped_by[0])

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _headers(self, request: web.Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        key = self.api_key
        if key is None:
            auth = request.headers.get("Authorization")
            if auth and not request.get(CALL_EXTRA, {}).get("own_key"):
                headers["Authorization"] = auth
        else:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        session, agent, path = split_path(request.path)
        if self.hooks is not None:
            session = self.hooks.session(request, session)
        if request.method == "POST" and path == "/v1/chat/completions":
            return await self._chat(request, session, agent)
        return await self._passthrough(request, path)

    async def _passthrough(self, request: web.Request, path: str) -> web.Response:
        assert self._http is not None
        body = await request.read()
        try:
            async with self._http.request(request.method, self.upstream + path,
                                          params=request.query, data=body or None,
                                          headers=self._headers(request)) as resp:
                data = await resp.read()
                return web.Response(body=data, status=resp.status,
                                    content_type=resp.content_type)
        except aiohttp.ClientError as err:
            return _error(502, f"upstream {self.upstream} unreachable: {type(err).__name__}")

    async def _post(self, call: dict, body: dict, headers: dict,
                    path: str = "/v1/chat/completions"
                    ) -> tuple[aiohttp.ClientResponse, dict | None]:
        """POST upstream, retrying connection failures, 429 and 5xx with the clients' one
        policy (``tracewheel.client.retry_delay``); the caller closes the response. Unless the
        request streams, a 200 is read here: its JSON object comes back with it, and a 200 whose
        body is not one (an HTML page from a proxy, a list) is retried as a 5xx is, and comes
        back as None when retries are spent. Each retry's cause goes in the call's
        ``upstream_retries``: a call that waited out the read timeout and then was answered is
        ok, and would otherwise show nothing but its latency."""
        assert self._http is not None
        data = dumps_bytes(body)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            retry_after = None
            try:
                resp = await self._http.post(self.upstream + path, data=data,
                                             headers={**headers,
                                                      "Content-Type": "application/json"})
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as err:
                if last:
                    raise
                if isinstance(err, asyncio.TimeoutError):
                    cause = f"no reply in {self.timeout:g} s"
                    print(f"recorder: session {call['session']}: upstream {self.upstream} sent "
                          f"{cause}; asking again", file=sys.stderr)
                else:
                    cause = type(err).__name__
            else:
                if resp.status == 200 and not body.get("stream"):
                    reply = _json_object(await resp.read())
                    if reply is not None or last:
                        return resp, reply
                    resp.release()
                    cause = "HTTP 200 not a JSON object"
                elif resp.status not in RETRY_STATUS or last:
                    return resp, None
                else:
                    retry_after = resp.headers.get("Retry-After")
                    await resp.read()
                    resp.release()
                    cause = f"HTTP {resp.status}"
            call.setdefault("upstream_retries", []).append(cause)
            await asyncio.sleep(retry_delay(attempt, retry_after))
        raise AssertionError("unreachable")

    async def _served_version(self) -> str | None:
        """The version the upstream serves now; where it cannot be read, the last one read.
        (tracewheel.weight_updates.weight_version asks the same, blocking, and raises: this one
        runs on the recorder's loop, once a call.)"""
        assert self._http is not None
        try:
            async with self._http.get(self.upstream + "/weight_info", headers=self._auth(),
                                      timeout=aiohttp.ClientTimeout(total=VERSION_TIMEOUT)
                                      ) as resp:
                if resp.status == 200:
                    version = (await resp.json(content_type=None)).get("weight_version")
                    if version is not None:
                        self.weight_version = str(version)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError):
            pass
        return self.weight_version

    async def _post_versioned(self, call: dict, body: dict, headers: dict, path: str
                              ) -> tuple[aiohttp.ClientResponse, dict | None]:
        """``_post``, marking ``call`` with the version of the weights that answered it.

        New weights come in while the server is paused: calls in flight finish on the old
        ones, calls that arrive meanwhile wait and run on the new ones. A call is marked with
        the last version read before it began (by any call), and the version is read again
        when it ends: where they agree, no update came between, and that version answered
        it. Where they differ, either weights may have answered, so it is asked again (at
        most VERSION_RETRIES times; ``version_retries`` counts them): one read a call, and a
        retry only for calls that an update overlapped. A stream is relayed as it comes and
        cannot be asked again: it is checked when it ends (``_stream_version``)."""
        for attempt in range(VERSION_RETRIES + 1):
            before = call["weight_version"] = self.weight_version
            resp, reply = await self._post(call, body, headers, path)
            if not self.versioned or body.get("stream") or resp.status != 200:
                return resp, reply
            after = await self._served_version()
            if after == before:
                return resp, reply
            if attempt == VERSION_RETRIES:
                call["version_span"] = [before, after]
                return resp, reply
            resp.release()
            call["version_retries"] = attempt + 1
        raise AssertionError("unreachable")

    async def _stream_version(self, call: dict) -> None:
        """A stream that ended under another version than it began: it is marked with the
        older one (a lag bound then errs on the safe side) and ``version_span``."""
        if self.versioned:
            after = await self._served_version()
            if after != call["weight_version"]:
                call["version_span"] = [call["weight_version"], after]

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
            "weight_version": self.weight_version,
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
            return _error(400, "request body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        policy = self._policy(agent)
        extra = {k: v for k, v in request.get(CALL_EXTRA, {}).items() if k != "own_key"}
        if self.policies is not None and policy is None:
            call = self._start_call(session, agent, body, extra)
            message = (f"agent {agent!r} is not in the policy map (it names "
                       f"{', '.join(sorted(self.policies))}) and there is no default policy")
            self._finish(call, status="error", error=message)
            return _error(400, message)
        if policy is not None:
            body = {**body, "model": policy}
        call = self._start_call(session, agent, body, extra)
        if policy is not None:
            call.update(policy=policy, policy_version=self.policy_versions.get(policy))
        plan = Plan()
        if self.continuation is not None:
            plan = self.continuation.plan(session, agent, body)
        if plan.prompt_ids is not None:
            call.update(tokens="continued", continues=plan.continues, drift=plan.drift)
            upstream_body = self.continuation.completion_body(body, plan.prompt_ids)
            path = "/v1/completions"
        else:
            call.update(tokens="rendered", tokens_reason=plan.reason)
            upstream_body = {**body, "logprobs": True, "return_token_ids": True}
            path = "/v1/chat/completions"
        asked_logprobs = bool(body.get("logprobs"))
        asked_ids = bool(body.get("return_token_ids"))
        headers = self._headers(request)
        try:
            resp, reply = await self._post_versioned(call, upstream_body, headers, path)
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            message = f"upstream {self.upstream} unreachable: {type(err).__name__}"
            self._finish(call, status="error", error=message)
            return _error(502, message)
        # An upstream may echo the key it was sent (OpenAI's 401 does): no error text, record
        # or relayed body carries it, nor the key the client sent.
        secrets = (self.api_key, _bearer(headers), _bearer(request.headers))
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
            message = (f"upstream {self.upstream} answered 200 with a body that is not a JSON "
                       f"object ({self.retries} retries)")
            self._finish(call, status="error", error=message)
            return _error(502, message)
        call["completion_id"] = _chat_id(reply.get("id"), plan.prompt_ids is not None)
        if plan.prompt_ids is not None:
            reply = self._chat_reply(call, body, plan.prompt_ids, reply)
        else:
            self._record_reply(call, reply)
        for choice in reply.get("choices") or []:
            _strip_choice(choice, asked_logprobs, asked_ids)
        _strip_reply(reply, asked_ids)
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
                                _plain(choice.get("message") or {}), choice.get("finish_reason"),
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
                                completions_logprobs(choice.get("logprobs")), _plain(message),
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
        asked_logprobs = bool(body.get("logprobs"))
        asked_ids = bool(body.get("return_token_ids"))
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                          "Cache-Control": "no-cache"})
        await out.prepare(request)
        choices: dict[int, _Accumulator] = {}
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
                        call["completion_id"] = _chat_id(chunk["id"], continued is not None)
                    if "error" in chunk and not chunk.get("choices"):
                        raise _StreamError(str((chunk["error"] or {}).get("message", "")))
                    model = chunk.get("model") or model
                    usage = chunk.get("usage") or usage
                    if continued is not None:
                        chunks = self._chat_chunks(chunk, streams, body, prompt_ids)
                    else:
                        prompt_ids = chunk.get("prompt_token_ids") or prompt_ids
                        for choice in chunk.get("choices") or []:
                            choices.setdefault(choice.get("index", 0),
                                               _Accumulator()).add(choice)
                            _strip_choice(choice, asked_logprobs, asked_ids)
                        _strip_reply(chunk, asked_ids)
                        chunks = [chunk]
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
            # Recorded, told in one line, and sent to the agent as vLLM reports an error in a
            # stream (an error event, then the end): a proper failure, not a cut-off reply.
            message = f"stream from {self.upstream} broke: {type(err).__name__}"
            if isinstance(err, _StreamError):
                message = f"stream from {self.upstream} ended with an error: {err}"[:1000]
            self._finish(call, status="error", error=message)
            print(f"recorder: session {call['session']}: {message}", file=sys.stderr)
            error = {"error": {"message": message, "type": "upstream_error", "code": 502}}
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await out.write(b"data: " + dumps_bytes(error) + b"\n\ndata: [DONE]\n\n")
                await out.write_eof()
            return out
        await self._stream_version(call)
        for index, acc in sorted(choices.items()):
            self._record_choice(call, index, prompt_ids, acc.token_ids, acc.logprobs,
                                _plain(acc.message()), acc.finish_reason, model, usage)
        for index, stream in sorted(streams.items()):
            message = stream.message or assistant_message(stream.text, stream.tools)[0]
            self._record_choice(call, index, prompt_ids, stream.token_ids, stream.logprobs,
                                _plain(message), stream.finish_reason, model, usage)
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out

    @staticmethod
    def _chat_chunks(chunk: dict, streams: dict[int, ChoiceStream], body: dict,
                     prompt_ids: list[int]) -> list[dict]:
        """A completions stream chunk as chat chunks, one choice each."""
        asked_logprobs = bool(body.get("logprobs"))
        asked_ids = bool(body.get("return_token_ids"))
        head = envelope(str(chunk.get("id", "")).replace("cmpl-", "chatcmpl-", 1),
                        chunk.get("model"), chunk.get("created"), "chat.completion.chunk")
        out = []
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            first = index not in streams
            stream = streams.setdefault(index, ChoiceStream(index, parses_tools(body)))
            for piece in stream.add(choice, asked_logprobs, asked_ids):
                out.append({**head, "choices": [piece]})
                if first and asked_ids:  # vLLM's chat stream sends the prompt ids first
                    out[-1]["prompt_token_ids"] = prompt_ids
                first = False
        if chunk.get("usage") is not None and not chunk.get("choices"):
            out.append({**head, "choices": [], "usage": chunk["usage"]})
        return out


class _StreamError(Exception):
    """The upstream sent an error event in the stream."""


def _strip_choice(choice: dict, asked_logprobs: bool, asked_ids: bool) -> None:
    """Give the agent what vLLM gives when not asked for ids or logprobs: nulls."""
    if not asked_ids and "token_ids" in choice:
        choice["token_ids"] = None
    if not asked_logprobs:
        choice["logprobs"] = None


def _strip_reply(reply: dict, asked_ids: bool) -> None:
    if not asked_ids:
        for key in _ADDED:
            if key in reply:
                reply[key] = None


SHUTDOWN_GRACE = 2.0
# A call that a weight update came in the middle of is asked again at most this many times.
VERSION_RETRIES = 2
VERSION_TIMEOUT = 10.0  # seconds to read the upstream's weight version
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _json_object(data: bytes) -> dict | None:
    try:
        value = loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _chat_id(reply_id: Any, continued: bool) -> str | None:
    """The id of the chat completion the client gets: a continued call's completions id as
    the chat id it is sent back under."""
    if not reply_id:
        return None
    return str(reply_id).replace("cmpl-", "chatcmpl-", 1) if continued else str(reply_id)


def _bearer(headers: Any) -> str | None:
    auth = headers.get("Authorization") or ""
    return auth.removeprefix("Bearer ").strip() or None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "recorder_error",
                                        "code": status}}, status=status)


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
