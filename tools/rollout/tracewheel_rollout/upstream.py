"""The server behind the recording proxy (vLLM, or any OpenAI-compatible endpoint): requests
sent with the clients' one retry policy (``tracewheel.client``), the version of the weights
that answered each call, and requests passed through unrecorded."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp
from aiohttp import web

from tracewheel.client import RETRY_STATUS, retry_delay
from tracewheel.jsonl import dumps_bytes, loads

# A call that a weight update came in the middle of is asked again at most this many times.
VERSION_RETRIES = 2
VERSION_TIMEOUT = 10.0  # seconds to read the upstream's weight version
MODELS_TIMEOUT = 30.0   # seconds to list the upstream's models


class Upstream:
    """One upstream, on the recorder's event loop: ``open()`` before the first request,
    ``close()`` after the last."""

    def __init__(self, url: str, *, api_key: str | None, retries: int, timeout: float,
                 weight_version: str | None):
        self.url = url.rstrip("/").removesuffix("/v1")
        self.api_key = api_key
        self.retries = retries
        self.timeout = timeout
        # The version of the weights serving the calls, where the upstream numbers them (vLLM's
        # /weight_info): then each call is marked with the version that served it (see
        # post_versioned); else every call with this (None: unnumbered).
        self.weight_version = weight_version
        self.versioned = weight_version is not None
        self.http: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self.timeout),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def models(self) -> list[dict]:
        """The upstream's ``GET /v1/models`` entries; none where it cannot say."""
        assert self.http is not None
        try:
            async with self.http.get(self.url + "/v1/models", headers=self.auth(),
                                     timeout=aiohttp.ClientTimeout(total=MODELS_TIMEOUT)
                                     ) as resp:
                if resp.status != 200:
                    return []
                data = _json_object(await resp.read()) or {}
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return []
        models = data.get("data")
        return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []

    async def passthrough(self, request: web.Request, path: str,
                          headers: dict[str, str]) -> web.Response:
        """A request that is not recorded, sent on as it came."""
        assert self.http is not None
        body = await request.read()
        try:
            async with self.http.request(request.method, self.url + path, params=request.query,
                                         data=body or None, headers=headers) as resp:
                data = await resp.read()
                return web.Response(body=data, status=resp.status,
                                    content_type=resp.content_type)
        except aiohttp.ClientError as err:
            return error_reply(502, f"upstream {self.url} unreachable: {type(err).__name__}")

    async def post(self, call: dict, body: dict, headers: dict,
                   path: str = "/v1/chat/completions"
                   ) -> tuple[aiohttp.ClientResponse, dict | None]:
        """POST upstream, retrying connection failures, 429 and 5xx with the clients' one
        policy (``tracewheel.client.retry_delay``); the caller closes the response. Unless the
        request streams, a 200 is read here: its JSON object comes back with it, and a 200 whose
        body is not one (an HTML page from a proxy, a list) is retried as a 5xx is, and comes
        back as None when retries are spent. Each retry's cause goes in the call's
        ``upstream_retries``: a call that waited out the read timeout and then was answered is
        ok, and would otherwise show nothing but its latency."""
        assert self.http is not None
        data = dumps_bytes(body)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            retry_after = None
            try:
                resp = await self.http.post(self.url + path, data=data,
                                            headers={**headers,
                                                     "Content-Type": "application/json"})
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as err:
                if last:
                    raise
                if isinstance(err, asyncio.TimeoutError):
                    cause = f"no reply in {self.timeout:g} s"
                    print(f"recorder: session {call['session']}: upstream {self.url} sent "
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

    async def served_version(self) -> str | None:
        """The version the upstream serves now; where it cannot be read, the last one read.
        (tracewheel.weight_updates.weight_version asks the same, blocking, and raises: this one
        runs on the recorder's loop, once a call.)"""
        assert self.http is not None
        try:
            async with self.http.get(self.url + "/weight_info", headers=self.auth(),
                                     timeout=aiohttp.ClientTimeout(total=VERSION_TIMEOUT)
                                     ) as resp:
                if resp.status == 200:
                    version = (await resp.json(content_type=None)).get("weight_version")
                    if version is not None:
                        self.weight_version = str(version)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError):
            pass
        return self.weight_version

    async def post_versioned(self, call: dict, body: dict, headers: dict, path: str
                             ) -> tuple[aiohttp.ClientResponse, dict | None]:
        """``post``, marking ``call`` with the version of the weights that answered it.

        New weights come in while the server is paused: calls in flight finish on the old
        ones, calls that arrive meanwhile wait and run on the new ones. A call is marked with
        the last version read before it began (by any call), and the version is read again
        when it ends: where they agree, no update came between, and that version answered
        it. Where they differ, either weights may have answered, so it is asked again (at
        most VERSION_RETRIES times; ``version_retries`` counts them): one read a call, and a
        retry only for calls that an update overlapped. A stream is relayed as it comes and
        cannot be asked again: it is checked when it ends (``stream_version``)."""
        for attempt in range(VERSION_RETRIES + 1):
            before = call["weight_version"] = self.weight_version
            resp, reply = await self.post(call, body, headers, path)
            if not self.versioned or body.get("stream") or resp.status != 200:
                return resp, reply
            after = await self.served_version()
            if after == before:
                return resp, reply
            if attempt == VERSION_RETRIES:
                call["version_span"] = [before, after]
                return resp, reply
            resp.release()
            call["version_retries"] = attempt + 1
        raise AssertionError("unreachable")

    async def stream_version(self, call: dict) -> None:
        """A stream that ended under another version than it began: it is marked with the
        older one (a lag bound then errs on the safe side) and ``version_span``."""
        if self.versioned:
            after = await self.served_version()
            if after != call["weight_version"]:
                call["version_span"] = [call["weight_version"], after]


def _json_object(data: bytes) -> dict | None:
    try:
        value = loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def bearer(headers: Any) -> str | None:
    """The key of an ``Authorization: Bearer`` header."""
    auth = headers.get("Authorization") or ""
    return auth.removeprefix("Bearer ").strip() or None


def error_reply(status: int, message: str) -> web.Response:
    """The recorder's and the gateway's one error shape (OpenAI's)."""
    return web.json_response({"error": {"message": message, "type": "recorder_error",
                                        "code": status}}, status=status)
