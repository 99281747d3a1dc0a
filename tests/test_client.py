"""The OpenAI-compatible client helpers against injected faults (a canned local server)."""

from __future__ import annotations

import threading
import time

import openai
import pytest
from canned import CannedServer, chat_completion

from tracewheel.client import (
    Endpoint,
    bounded_map,
    call_with_retries,
    describe_api_error,
    make_client,
    redact,
)

SECRET = "sk-test-0123456789abcdef"


def ask(endpoint: Endpoint, **kw):
    client = make_client(endpoint)
    return call_with_retries(
        lambda: client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]),
        retries=endpoint.retries, base_delay=0.01, max_delay=0.05, **kw)


def test_429_and_500_are_retried_until_an_answer():
    script = [(429, {}, {"error": "slow down"}), (500, {}, {"error": "boom"}),
              (503, {}, {"error": "later"}), (200, {}, chat_completion("fine"))]
    retried = []
    with CannedServer(lambda n: script[n]) as server:
        resp = ask(Endpoint(server.base_url, "m", SECRET, retries=4),
                   on_retry=lambda attempt, err, delay: retried.append(attempt))
        assert resp.choices[0].message.content == "fine"
        assert len(server.requests) == 4
        assert retried == [1, 2, 3]


def test_a_call_after_a_stopped_bounded_map_retries_again():
    """A bounded_map whose caller stopped ends its calls' retries; once they have ended, a
    later call in the same process retries as usual (it made none: the order of the tests
    decided whether this file passed)."""
    from tracewheel.client import STOPPING

    mapped = bounded_map(lambda i: time.sleep(0.2), range(4), workers=2)
    next(mapped)
    mapped.close()  # the caller stops
    for _ in range(100):
        if not STOPPING.is_set():
            break
        time.sleep(0.05)
    script = [(429, {}, {"error": "slow down"}), (200, {}, chat_completion("fine"))]
    with CannedServer(lambda n: script[n]) as server:
        resp = ask(Endpoint(server.base_url, "m", SECRET, retries=2))
        assert resp.choices[0].message.content == "fine"


def test_an_endpoint_that_stays_down_raises_after_the_retries():
    with CannedServer(lambda n: (500, {}, {"error": "down"})) as server:
        with pytest.raises(openai.InternalServerError):
            ask(Endpoint(server.base_url, "m", retries=2))
        assert len(server.requests) == 3


def test_client_errors_are_not_retried():
    with CannedServer(lambda n: (400, {}, {"error": {"message": "bad request"}})) as server:
        with pytest.raises(openai.BadRequestError):
            ask(Endpoint(server.base_url, "m", retries=3))
        assert len(server.requests) == 1


def test_timeouts_are_retried():
    with CannedServer(lambda n: (200, {}, chat_completion("late but here")),
                      delay=lambda n: 2.0 if n == 0 else 0) as server:
        resp = ask(Endpoint(server.base_url, "m", timeout=0.5, retries=2))
        assert resp.choices[0].message.content == "late but here"
        assert len(server.requests) == 2


def test_retry_after_header_is_honoured():
    script = [(429, {"retry-after": "0.2"}, {"error": "wait"}), (200, {}, chat_completion())]
    delays = []
    with CannedServer(lambda n: script[n]) as server:
        client = make_client(Endpoint(server.base_url, "m"))
        call_with_retries(lambda: client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]),
            retries=2, max_delay=5, on_retry=lambda a, e, d: delays.append(d))
    assert delays == [0.2]


def test_api_key_is_sent_but_never_shown():
    with CannedServer(lambda n: (401, {}, {"error": {"message": f"bad key {SECRET}"}})) as server:
        endpoint = Endpoint(server.base_url, "m", SECRET, retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            ask(endpoint)
        assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    message = describe_api_error(info.value, endpoint)
    assert "HTTP 401" in message and SECRET not in message and "***" in message
    assert SECRET not in repr(endpoint)
    assert redact(f"key={SECRET}", SECRET) == "key=***"


def test_no_endpoint_is_a_clear_error():
    from tracewheel.errors import TracewheelError

    with pytest.raises(TracewheelError, match="--base-url"):
        make_client(Endpoint(None, "m"))


def test_bounded_map_keeps_input_order_and_bounds_work_in_flight():
    in_flight, peak, lock = 0, 0, threading.Lock()
    consumed = []

    def items():
        for i in range(40):
            consumed.append(i)
            yield i

    def work(i):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.001 * ((i * 7) % 5))
        with lock:
            in_flight -= 1
        if i == 13:
            raise ValueError("thirteen")
        return i * i

    results = []
    for item, result in bounded_map(work, items(), workers=3):
        results.append((item, result))
        # never more than 2 * workers items pulled ahead of what was yielded
        assert len(consumed) - len(results) <= 6
    assert [i for i, _ in results] == list(range(40))
    assert isinstance(results[13][1], ValueError)
    assert all(r == i * i for i, r in results if i != 13)
    assert peak <= 3


def test_bounded_map_unordered_yields_everything_once():
    got = dict(bounded_map(lambda i: (time.sleep(0.002 * (5 - i % 5)), i)[1], range(20),
                           workers=4, ordered=False))
    assert got == {i: i for i in range(20)}
