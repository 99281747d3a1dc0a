"""Test and benchmark helper, not part of the library: a local HTTP server that answers from a
script of canned replies, for injecting faults (429, 500, slow answers, malformed bodies) into
client code, and for benchmarks against an endpoint of fixed latency. Never a stand-in for the
real path. Binds 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = tuple[int, dict, "dict | str"]  # status, headers, body


def chat_completion(content: str = "ok", model: str = "m", *, token_ids: bool = False,
                    tool_calls: list[dict] | None = None) -> dict:
    """A chat completion reply; with ``token_ids``, shaped like vLLM's when asked for
    ``return_token_ids`` and ``logprobs`` (one made-up id and logprob per character)."""
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    choice: dict = {"index": 0, "finish_reason": "tool_calls" if tool_calls else "stop",
                    "message": message, "logprobs": None}
    reply: dict = {
        "id": "chatcmpl-canned", "object": "chat.completion", "created": 0, "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    if token_ids:
        ids = [ord(c) for c in content or "x"]
        choice["token_ids"] = ids
        choice["logprobs"] = {"content": [{"token": chr(i), "logprob": -0.5, "bytes": [],
                                           "top_logprobs": []} for i in ids]}
        reply["prompt_token_ids"] = [1, 2, 3]
    return reply


class CannedServer:
    """``replies(n)`` gives the reply to the n-th POST (0-based); ``delay(n)`` its delay;
    ``get(path)`` the reply to a GET (default: 404)."""

    def __init__(self, replies: Callable[[int], Reply],
                 delay: Callable[[int], float] = lambda n: 0,
                 get: Callable[[str], Reply] = lambda path: (404, {}, {"error": "no route"})):
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do

            def setup(self):
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's algorithm and
                # delayed ACKs add ~40 ms to every reply.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with outer._lock:
                    n = len(outer.requests)
                    outer.requests.append({"path": self.path, "headers": dict(self.headers),
                                           "body": json.loads(body or b"{}")})
                time.sleep(delay(n))
                self._reply(*replies(n))

            def do_GET(self):  # noqa: N802
                self._reply(*get(self.path))

            def _reply(self, status: int, headers: dict, payload: dict | str) -> None:
                text = payload if isinstance(payload, str) else json.dumps(payload)
                data = text.encode()
                try:
                    self.send_response(status)
                    for k, v in {"content-type": "application/json", **headers}.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # many clients connect at once in benchmarks

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> CannedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
