"""The record contracts: what tools rely on, and clear messages when a record breaks them."""

import pytest

from tracewheel.errors import RecordError
from tracewheel.records import (
    stable_id,
    task_messages,
    validate_rollout,
    validate_sample,
    validate_task,
)


def call(**over):
    base = {"agent": "MathAgent", "messages": [{"role": "user", "content": "2+2?"}],
            "prompt_ids": [1, 2, 3], "completion_ids": [4, 5], "logprobs": [-0.1, -0.2]}
    return {**base, **over}


def rollout(**over):
    base = {"id": "t1/0", "task_id": "t1", "group": "t1", "sample": 0, "calls": [call()],
            "final": "4", "reward": 1.0, "status": "ok"}
    return {**base, **over}


def test_task_keeps_unknown_fields_and_object_identity():
    record = {"id": "a", "query": "2+2?", "messages": [], "judge": {"verdict": "keep"}, "x": [1]}
    assert validate_task(record) is record
    assert record["judge"] == {"verdict": "keep"} and record["x"] == [1]


def test_task_without_id_gets_a_stable_content_id():
    a = validate_task({"query": "What is 2+2?"})
    b = validate_task({"query": "What is 2+2?"})
    c = validate_task({"query": "What is 2+3?"})
    assert a["id"] == b["id"] != c["id"]
    assert a["id"].startswith("task-")


@pytest.mark.parametrize("record, problem", [
    ({"id": "a"}, "query: Field required"),
    ({"id": "a", "query": 3}, "query: Input should be a valid string"),
    ({"id": "a", "query": "q", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"id": "", "query": "q"}, "id: String should have at least 1 character"),
])
def test_task_problems_are_named(record, problem):
    with pytest.raises(RecordError, match="not a valid task record") as info:
        validate_task(record)
    assert problem in str(info.value)


def test_rollout_checks_one_logprob_per_completion_token():
    validate_rollout(rollout())
    with pytest.raises(RecordError, match="1 logprobs for 2 completion tokens"):
        validate_rollout(rollout(calls=[call(logprobs=[-0.1])]))


def test_rollout_status_is_one_of_ok_error_timeout():
    validate_rollout(rollout(status="timeout", error="took too long", calls=[]))
    with pytest.raises(RecordError, match="status"):
        validate_rollout(rollout(status="done"))


def test_sample_mask_and_logprobs_align_with_input_ids():
    ok = {"id": "s", "input_ids": [1, 2, 3], "loss_mask": [0, 1, 1], "logprobs": [0, -1, -2]}
    assert validate_sample(ok) is ok
    with pytest.raises(RecordError, match="loss_mask has 2 entries for 3 input_ids"):
        validate_sample({**ok, "loss_mask": [0, 1]})
    with pytest.raises(RecordError, match="logprobs has 1 entries for 3 input_ids"):
        validate_sample({**ok, "logprobs": [0.0]})
    with pytest.raises(RecordError, match="loss_mask"):
        validate_sample({**ok, "loss_mask": [0, 2, 1]})


def test_stable_id_depends_on_content_not_on_key_order():
    assert stable_id({"a": 1, "b": 2}) == stable_id({"b": 2, "a": 1})
    assert stable_id("x", 1) != stable_id("x", 2)


def test_task_messages_fall_back_to_the_query():
    assert task_messages({"query": "hi"}) == [{"role": "user", "content": "hi"}]
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    assert task_messages({"query": "hi", "messages": msgs}) == msgs
