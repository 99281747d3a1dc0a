"""trace-filter learn-rubrics: labelled examples in, the rubric text that agrees best out. The
choice is checked against a canned endpoint whose judge follows the rubrics it is given; the
real path runs on the embedded model."""

from __future__ import annotations

import json
import re

import pytest
from canned import CannedServer, chat_completion
from click.testing import CliRunner

from tracewheel.ask import ReplyError
from tracewheel.errors import RecordError
from tracewheel_trace_filter.cli import main as trace_filter
from tracewheel_trace_filter.learn import example_label, parse_rubrics

BOXED_RULE = "Drop the task when the final answer is not wrapped in \\boxed{}."
VAGUE_RULE = "Keep answers that are polite."


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEWHEEL_CACHE", str(tmp_path / "cache"))


def example(i: int, answer: str, label: str | None, **extra) -> dict:
    record = {"id": f"e{i}", "query": f"What is {i} + {i}?", "answer": answer,
              "messages": [{"role": "user", "content": f"What is {i} + {i}?"}], **extra}
    if label is not None:
        record["label"] = label
    return record


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def learn(args, input_text=None):
    return CliRunner().invoke(trace_filter, ["learn-rubrics", *map(str, args)],
                              input=input_text)


EXAMPLES = [example(1, "2 + 2 is \\boxed{4}", "keep"), example(2, "It is 4.", "drop"),
            example(3, "\\boxed{6}", "keep"), example(4, "six", "drop"),
            example(5, "The sum is \\boxed{10}.", "keep"), example(6, "ten, I think", "drop")]


def rubric_following_endpoint(server_requests: list, proposals: list[str]):
    """A canned endpoint for the algorithm, not the model: its 'judge' drops an answer without
    \\boxed{} when the rubrics in its system prompt ask for a box, else keeps; its proposals
    are ``proposals`` in turn."""
    asked = {"n": 0}

    def reply(n: int):
        body = server_requests[n]["body"]
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        if system.startswith("You write rubrics"):
            rules = proposals[min(asked["n"], len(proposals) - 1)]
            asked["n"] += 1
            return 200, {}, chat_completion(json.dumps({"rubrics": [rules]}))
        answer = user.split("## Agent's answer\n", 1)[1].split("\n\n## ", 1)[0]
        wants_box = "# Custom rubrics" in system and "boxed" in system.split("# Custom")[1]
        verdict = "drop" if wants_box and "\\boxed{" not in answer else "keep"
        return 200, {}, chat_completion(json.dumps({"verdict": verdict, "reason": "r"}))

    return reply


def rubric_server(proposals: list[str]) -> CannedServer:
    replies: dict = {}
    server = CannedServer(lambda n: replies["reply"](n))
    replies["reply"] = rubric_following_endpoint(server.requests, proposals)
    return server


def test_the_rubric_text_that_agrees_best_is_written_with_every_candidates_figures(tmp_path):
    out, scores = tmp_path / "rubrics.txt", tmp_path / "scores.jsonl"
    with rubric_server([VAGUE_RULE, BOXED_RULE]) as server:
        result = learn(["--base-url", server.base_url, "--model", "m", "--candidates", "2",
                        "--rounds", "1", "--max-thread", "1", "-o", out, "--scores", scores],
                       jsonl(*EXAMPLES))
    assert result.exit_code == 0, result.output
    assert out.read_text() == f"1. {BOXED_RULE}\n"
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert [r["origin"] for r in rows] == ["base criteria", "proposal 1", "proposal 2"]
    assert [r["agree"] for r in rows] == [3, 3, 6]
    assert rows[2]["chosen"] and rows[2]["tp"] == 3 and rows[2]["tn"] == 3
    assert rows[0]["fp"] == 3  # the base criteria alone keep everything
    assert "best proposal 2 6/6 agree (100%) vs base criteria 3/6" in result.stderr
    assert "revision" not in result.stderr  # nothing left to revise


def test_a_rerun_asks_nothing_and_writes_the_same_text(tmp_path):
    proposals = [VAGUE_RULE]
    outs = []
    for attempt in range(2):
        out = tmp_path / f"rubrics-{attempt}.txt"
        with rubric_server(proposals) as server:
            result = learn(["--base-url", server.base_url, "--model", "m", "--candidates", "1",
                            "--rounds", "2", "-o", out], jsonl(*EXAMPLES))
            asked = len(server.requests)
        assert result.exit_code == 0, result.output
        outs.append((out.read_text(), asked))
    (text, first), (again, second) = outs
    assert text == again and first > 0 and second == 0
    assert "0 proposals asked" in result.stderr


def test_revisions_are_shown_what_the_best_text_gets_wrong(tmp_path):
    proposals = [VAGUE_RULE, BOXED_RULE]
    with rubric_server(proposals) as server:
        result = learn(["--base-url", server.base_url, "--model", "m", "--candidates", "1",
                        "--rounds", "1", "--max-thread", "1"], jsonl(*EXAMPLES))
        revise = [r["body"]["messages"] for r in server.requests
                  if "still disagrees" in r["body"]["messages"][0]["content"]]
    assert result.exit_code == 0, result.output
    assert result.stdout == f"1. {BOXED_RULE}\n"  # the revision wins
    (messages,) = revise
    user = messages[1]["content"]
    assert user.startswith(f"# Current rubrics\n1. {VAGUE_RULE}")
    assert "the person's label is DROP; the judge said KEEP" in user
    assert "the person's label is KEEP" not in user  # only what it got wrong


def test_examples_without_a_label_are_named_by_line(tmp_path):
    path = tmp_path / "examples.jsonl"
    path.write_text(jsonl(EXAMPLES[0], example(2, "It is 4.", None), EXAMPLES[2]))
    result = learn([path])
    assert result.exit_code == 1
    assert f"{path}:2: no label: give `label` (keep or drop)" in result.output
    bad_label = tmp_path / "bad.jsonl"
    bad_label.write_text(jsonl(example(1, "x", "maybe")))
    result = learn([bad_label])
    assert result.exit_code == 1 and "label must be keep or drop, got 'maybe'" in result.output


def test_examples_with_an_empty_answer_or_a_bad_reference_are_named_by_line(tmp_path):
    path = tmp_path / "examples.jsonl"
    path.write_text(jsonl(EXAMPLES[0], example(2, "", "drop"),
                          example(3, "\\boxed{6}", "keep", reference=[6])))
    result = learn([path])
    assert result.exit_code == 1
    assert f"{path}:2: empty answer: an example needs the answer its label judges" \
        in result.output


def test_skip_invalid_counts_bad_examples_and_too_few_is_an_error(tmp_path):
    path = tmp_path / "examples.jsonl"
    path.write_text(jsonl(EXAMPLES[0], example(2, "", "drop"),
                          example(3, "\\boxed{6}", "keep", reference=[6])))
    result = learn(["--skip-invalid", path])
    assert result.exit_code == 1
    assert "1 labelled example(s): learning rubrics needs at least 2" in result.output


def test_annotate_output_is_a_labelled_example():
    record = {"id": "a", "query": "q", "answer": "x",
              "judge": {"verdict": "drop", "by": "judge", "reason": "wrong"}}
    assert example_label(record) == ("drop", "wrong")
    assert example_label({**record, "label": "keep"}) == ("keep", None)  # a person's correction
    with pytest.raises(RecordError, match="no label"):
        example_label({**record, "judge": {"verdict": "error"}})


def test_proposals_are_read_strictly():
    assert parse_rubrics('{"rubrics": ["1. Be always right.", "- Be very brief.", '
                         '"1. Be always right."]}') == "1. Be always right.\n2. Be very brief."
    assert parse_rubrics('```json\n{"rubrics": ["Box the answer."]}\n```') == \
        "1. Box the answer."
    assert parse_rubrics('{"rubrics": ["12", "Answer in a box.", "1.1.2"]}') == \
        "1. Answer in a box."  # a weak model's noise is not a rule
    for bad in ['{"rubrics": []}', '{"rubrics": "Be right."}', '{"rules": ["x"]}', "[1]",
                '{"rubrics": ["  "]}', "Be right.", '{"rubrics": ["1", "2475"]}']:
        with pytest.raises(ReplyError):
            parse_rubrics(bad)


@pytest.mark.vllm
def test_learn_rubrics_runs_end_to_end_on_the_embedded_model(vllm_server, tmp_path):
    examples = [example(1, "1 + 1 = 2, so \\boxed{2}", "keep"),
                example(2, "I don't know.", "drop", label_reason="no answer"),
                example(3, "3 + 3 = \\boxed{7}", "drop", reference="6",
                        label_reason="the answer is wrong"),
                example(4, "4 + 4 = 8, so \\boxed{8}", "keep")]
    out, scores = tmp_path / "rubrics.txt", tmp_path / "scores.jsonl"
    args = ["--base-url", vllm_server.base_url, "--model", "smollm2-135m", "--candidates", "1",
            "--rounds", "1", "--max-tokens", "128", "-o", out, "--scores", scores]
    result = learn(args, jsonl(*examples))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert re.match(r"1\. \S", text)  # a numbered list of rules, whatever their quality
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert rows[0]["origin"] == "base criteria" and len(rows) >= 2
    assert all(r["examples"] == 4 and 0 <= r["agreement"] <= 1 for r in rows)
    assert sum(r["chosen"] for r in rows) == 1
    again = learn(args, jsonl(*examples))
    assert again.exit_code == 0 and out.read_text() == text
    assert "0 proposals asked" in again.stderr
    # what it wrote is what --rubrics reads
    judged = CliRunner().invoke(trace_filter, [
        "--base-url", vllm_server.base_url, "--model", "smollm2-135m", "--rubrics", str(out),
        "--max-tokens", "128", "--annotate"], input=jsonl(*examples))
    assert judged.exit_code == 0, judged.output
