"""The recorder's life: an aiohttp server on an event loop of its own thread (``start`` /
``stop``, for ``rollout run``) or of the main thread until a signal (``serve_forever``, for
``rollout record`` and ``rollout gateway``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from tracewheel.cli import Terminated

# On stop, requests still waiting on the upstream get this many seconds, then are cancelled
# (aiohttp's default waits 60 s: a Ctrl-C that seems to hang).
SHUTDOWN_GRACE = 2.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_S = TypeVar("_S", bound="Service")


class Service:
    """What a server on its own event loop does to start and stop; a subclass says what
    starting (``_start``, on the loop) and stopping (``_stop``) are."""

    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    def start(self: _S) -> _S:
        """Serve on a thread of its own; a failure to start is raised here."""
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

    def serve_forever(self, ready: Callable[[], None] = lambda: None) -> None:
        """Run in the calling (main) thread until SIGINT, SIGTERM or SIGHUP, then raise
        KeyboardInterrupt or Terminated as the signal would have; ``ready()`` once it
        listens."""
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

    def stop(self) -> None:
        """Stop the server that ``start`` started (and its thread)."""
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
