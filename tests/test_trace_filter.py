"""trace-filter: rule filters and dedup on the real fixture exports, the judge against injected
faults (a canned local server), and the real vLLM judge on a few records."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from canned import CannedServer, chat_completion
from click.testing import CliRunner

from tracewheel.answers import check_answer
from tracewheel.judge import BASE_CRITERIA
from tracewheel_trace_export.cli import main as trace_export
from tracewheel_trace_filter.cli import main as trace_filter

from conftest import ROOT, load_script

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "studio"
LEGACY_DB = FIXTURES / "studio-1.0.5_agentscope-1.0.7.sqlite"
KEEP = json.dumps({"verdict": "keep", "reason": "fine"})
DROP = json.dumps({"verdict": "drop", "reason": "wrong"})


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEWHEEL_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module", params=sorted(FIXTURES.glob("*.sqlite")), ids=lambda p: p.stem)
def exported(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tasks.jsonl"
    result = CliRunner().invoke(trace_export, [str(request.param), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return request.param, out


@pytest.fixture(scope="module")
def legacy_tasks(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tasks.jsonl"
    CliRunner().invoke(trace_export, [str(LEGACY_DB), "-o", str(out)])
    return out


def run(args, input_path=None, input_text=None):
    result = CliRunner().invoke(trace_filter, [str(a) for a in args] +
                                ([str(input_path)] if input_path else []), input=input_text)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, records


def task(i, query="What is 2+2?", answer="4", **extra):
    return {"id": f"t{i}", "query": query, "answer": answer,
            "messages": [{"role": "user", "content": query}], **extra}


def jsonl(*records):
    return "".join(json.dumps(r) + "\n" for r in records)


# --- rule filters on real exports ------------------------------------------------------------

def test_require_boxed_keeps_exactly_the_boxed_answers(exported):
    db, tasks = exported
    truth = json.loads(db.with_suffix(".manifest.json").read_text())
    boxed = {t["scripted_final_answer"] for r in truth["runs"] for t in r["turns"]
             if t["has_boxed"] and not t["error"]}
    result, kept = run(["--no-judge", "--require-boxed"], tasks)
    assert result.exit_code == 0, result.output
    assert {r["answer"] for r in kept} == boxed
    expected = sum(1 for r in truth["runs"] for t in r["turns"]
                   if t["has_boxed"] and not t["error"])
    assert len(kept) == expected


def test_drop_errors_and_invert_partition_the_input(legacy_tasks):
    _, kept = run(["--no-judge", "--drop-errors"], legacy_tasks)
    _, dropped = run(["--no-judge", "--drop-errors", "--invert"], legacy_tasks)
    assert {r["status"] for r in dropped} == {"error"} and len(dropped) == 2
    everything = legacy_tasks.read_text().splitlines()
    assert len(kept) + len(dropped) == len(everything)
    assert not {r["id"] for r in kept} & {r["id"] for r in dropped}


def test_annotate_keeps_every_record_with_its_verdict(legacy_tasks):
    result, records = run(["--no-judge", "--require-boxed", "--annotate"], legacy_tasks)
    assert len(records) == 57
    drops = [r for r in records if r["judge"]["verdict"] == "drop"]
    assert drops and all(r["judge"]["by"] == "rule:require-boxed" for r in drops)
    assert "57 read, 43 kept, 14 dropped (14 rule:require-boxed)" in result.stderr


def test_require_reference_keeps_tasks_with_a_reference():
    records = [task(1, reference="4"), task(2, reference=None), task(3, reference=" "),
               task(4)]
    result, kept = run(["--no-judge", "--require-reference"], input_text=jsonl(*records))
    assert [r["id"] for r in kept] == ["t1"]
    assert "3 dropped (3 rule:require-reference)" in result.stderr


def test_regex_and_length_rules():
    records = [task(1, answer="The answer is 42."), task(2, answer="no idea"),
               task(3, answer="x" * 500)]
    _, kept = run(["--no-judge", "--require-regex", r"\d+"], input_text=jsonl(*records))
    assert [r["id"] for r in kept] == ["t1"]
    _, kept = run(["--no-judge", "--min-len", "8", "--max-len", "100"],
                  input_text=jsonl(*records))
    assert [r["id"] for r in kept] == ["t1"]


def test_dedup_exact_near_and_against_a_corpus(tmp_path):
    long_q = ("A bakery sells 45 muffins per day at $3 each and 30 cakes per day at $12 each. "
              "What is its revenue over a 5-day work week?")
    records = [task(1, long_q), task(2, long_q.upper().replace("?", " ?!")),
               task(3, long_q.replace("5-day", "6-day")), task(4, "Something else entirely.")]
    result, kept = run(["--no-judge", "--dedup"], input_text=jsonl(*records))
    assert [r["id"] for r in kept] == ["t1", "t4"]
    assert "1 dedup:exact" in result.stderr and "1 dedup:near" in result.stderr
    _, kept = run(["--no-judge", "--dedup", "--similarity", "1"], input_text=jsonl(*records))
    assert [r["id"] for r in kept] == ["t1", "t3", "t4"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(jsonl(task(99, "something ELSE, entirely")))
    _, kept = run(["--no-judge", "--dedup", "--against", corpus], input_text=jsonl(*records))
    assert [r["id"] for r in kept] == ["t1"]
    # a bad line of the corpus: its line, and no hint of --skip-invalid (it skips the input)
    corpus.write_text(jsonl(task(99, "x")) + "\n{not json\n")
    result, _ = run(["--no-judge", "--dedup", "--against", corpus, "--skip-invalid"],
                    input_text=jsonl(*records))
    assert result.exit_code == 1 and f"{corpus}:3: invalid JSON" in result.output
    assert "use --skip-invalid" not in result.output


def test_same_follow_up_in_different_conversations_is_not_a_duplicate(legacy_tasks):
    _, kept = run(["--no-judge", "--dedup"], legacy_tasks)
    assert len(kept) == 57


def test_incompatible_options_are_usage_errors():
    result, _ = run(["--no-judge", "--annotate", "--invert"], input_text="")
    assert result.exit_code == 2 and "--annotate and --invert" in result.output
    result, _ = run(["--no-judge", "--against", __file__], input_text="")
    assert result.exit_code == 2 and "--against needs --dedup" in result.output


# --- the reference check on real exports ----------------------------------------------------



def flywheel_filter_args() -> list[str]:
    """The rule filters `make flywheel` runs (flywheel.mk's FILTER_ARGS default)."""
    for line in (ROOT / "flywheel.mk").read_text().splitlines():
        if line.startswith("FILTER_ARGS ?="):
            return line.split("?=", 1)[1].split("##")[0].split()
    raise AssertionError("no FILTER_ARGS in flywheel.mk")


def graded_export(db: Path, tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    """The database exported with references from its manifest, and each task's manifest turn
    (matched as scripts/make_demo_references.py matches them)."""
    script = load_script("scripts/make_demo_references.py")
    pairs = script.graded_turns(db)
    refs = tmp_path / "references.jsonl"
    refs.write_text(jsonl(*({"id": record["id"], "reference": turn["expected_answer"]}
                            for record, turn in pairs if turn["expected_answer"] is not None)))
    graded = tmp_path / "graded.jsonl"
    result = CliRunner().invoke(trace_export, [str(db), "--references", str(refs),
                                               "-o", str(graded)])
    assert result.exit_code == 0, result.output
    return graded, {record["id"]: turn for record, turn in pairs}


@pytest.mark.parametrize("db", sorted(FIXTURES.glob("*.sqlite")), ids=lambda p: p.stem)
def test_the_flywheel_filter_keeps_no_wrong_answer_and_drops_no_right_one(db, tmp_path):
    graded, turns = graded_export(db, tmp_path)
    result, records = run(["--no-judge", "--annotate", *flywheel_filter_args()], graded)
    assert result.exit_code == 0, result.output
    assert len(records) == len(turns)
    for record in records:
        turn, verdict = turns[record["id"]], record["judge"]
        if verdict["verdict"] == "keep":
            assert turn["is_correct"] is True, (record["answer"], turn["expected_answer"])
        if turn["is_correct"] is True and turn["expected_answer"] is not None:
            assert verdict["by"] != "rule:check-reference", verdict
        if verdict["by"] == "rule:check-reference":
            assert verdict["reference_check"]["outcome"] == "contradict", verdict
    wrong = [r for r in records if turns[r["id"]]["is_correct"] is False
             and r["judge"]["by"] not in ("rule:drop-errors", "dedup:exact")]
    assert wrong and all(r["judge"]["by"] == "rule:check-reference" for r in wrong)


def test_the_demo_filter_drops_the_wrong_answers_and_counts_what_it_cannot_decide():
    export = CliRunner().invoke(trace_export, [
        str(ROOT / "examples" / "demo.sqlite"), "--agent", "MathAgent", "--status", "ok",
        "--references", str(ROOT / "examples" / "demo-references.jsonl")])
    tasks = export.stdout
    records = [task(1, answer="It is 6 or 7, I think.", reference="6", query="a"),
               task(2, answer="I would rather not say what the answer to this one is.",
                    reference="4", query="b")]
    manifest = json.loads((ROOT / "examples" / "demo.manifest.json").read_text())
    wrong = sum(turn["is_correct"] is False and turn["has_reference"]
                for run_ in manifest["runs"] for turn in run_["turns"])
    result, kept = run(["--no-judge", *flywheel_filter_args()],
                       input_text=tasks + jsonl(*records))
    assert result.exit_code == 0, result.output
    # the demo's wrong answers that have a reference, and the 2 records above
    assert f"{wrong + 2} rule:check-reference" in result.stderr
    assert "2 undecided (1 not the final number, 1 no final value)" in result.stderr
    for record in kept:
        assert check_answer(record["answer"], record["reference"]).outcome == "agree"
    assert {r["id"] for r in kept}.isdisjoint({"t1", "t2"})
    _, kept_too = run(["--no-judge", "--check-reference"], input_text=jsonl(*records))
    assert [r["id"] for r in kept_too] == ["t1", "t2"]  # undecided goes on by default


def test_the_check_annotates_each_verdict():
    records = [task(1, answer="\\boxed{4}", reference=4), task(2, answer="\\boxed{5}",
                                                               reference="4"), task(3)]
    result, annotated = run(["--no-judge", "--check-reference", "--annotate"],
                            input_text=jsonl(*records))
    checks = [r["judge"].get("reference_check") for r in annotated]
    assert [c["outcome"] for c in checks] == ["agree", "contradict", "undecided"]
    assert checks[1]["reason"] == "5, the reference is 4" and checks[1]["predicted"] == ["5"]
    assert [r["judge"]["verdict"] for r in annotated] == ["keep", "drop", "keep"]
    assert "1 undecided (1 no reference)" in result.stderr


@pytest.mark.parametrize("reference, problem", [
    ([2, 3], "reference: must be text or a number, not a list"),
    (True, "reference: must be text or a number, not true/false"),
    ({"value": 4}, "reference: must be text or a number, not an object"),
])
def test_a_reference_that_is_not_text_or_a_number_is_named_by_line(tmp_path, reference,
                                                                   problem):
    path = tmp_path / "tasks.jsonl"
    path.write_text(jsonl(task(1, reference="4"), task(2, reference=reference)))
    result, kept = run(["--no-judge", "--check-reference"], path)
    assert result.exit_code == 1
    assert f"{path}:2: not a valid task record: {problem}" in result.output
    result, kept = run(["--no-judge", "--check-reference", "--skip-invalid"], path)
    assert result.exit_code == 0 and [r["id"] for r in kept] == ["t1"]
    assert "1 invalid (1 bad record)" in result.stderr


def test_an_empty_answer_beside_a_reference_is_bad_input(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(jsonl(task(1, answer="  ", reference="4"), task(2, answer=None,
                                                                    reference="4")))
    result, _ = run(["--no-judge", "--check-reference"], path)
    assert result.exit_code == 1
    assert f"{path}:1: empty answer: nothing to check against the reference" in result.output
    result, kept = run(["--no-judge", "--check-reference", "--skip-invalid", "--annotate"],
                       path)
    assert result.exit_code == 0 and "1 invalid" in result.stderr
    assert kept[0]["judge"]["reason"] == "contradict: no answer to compare with the reference"
    plain, _ = run(["--no-judge"], path)  # without the check an empty answer is no one's business
    assert plain.exit_code == 0


def test_undecided_needs_check_reference():
    result, _ = run(["--no-judge", "--undecided", "drop"], input_text="")
    assert result.exit_code == 2 and "--undecided needs --check-reference" in result.output


# --- the judge against a canned endpoint -----------------------------------------------------

def judge_args(server, *more):
    return ["--base-url", server.base_url, "--model", "judge-m", "--max-thread", "1", *more]


def test_judge_sees_query_answer_tools_feedback_and_the_rubrics(tmp_path):
    record = task(1, "What is 6*7?", "\\boxed{42}", reference="42",
                  feedback=[{"role": "user", "content": "That's wrong, the answer is 48."}],
                  trajectory=[{"type": "tool", "name": "execute_python_code",
                               "arguments": {"code": "print(6*7)"}, "result": "42"}])
    rubrics = tmp_path / "rubrics.txt"
    rubrics.write_text("1. Drop the task if the answer is wrong.\n")
    with CannedServer(lambda n: (200, {}, chat_completion(KEEP))) as server:
        result, kept = run(judge_args(server, "--rubrics", rubrics), input_text=jsonl(record))
        body = server.requests[0]["body"]
    assert result.exit_code == 0, result.output
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    assert BASE_CRITERIA in system and "# Custom rubrics" in system
    assert "1. Drop the task if the answer is wrong." in system
    for part in ("What is 6*7?", "\\boxed{42}", "That's wrong, the answer is 48.",
                 "execute_python_code", "print(6*7)", "## Known-good reference answer\n42"):
        assert part in user
    assert body["response_format"]["type"] == "json_schema"
    assert [r["id"] for r in kept] == ["t1"]


def test_second_run_is_answered_from_the_cache_drops_included():
    records = [task(i, f"question {i}") for i in range(6)]
    with CannedServer(lambda n: (200, {}, chat_completion(KEEP if n % 2 else DROP))) as server:
        _, first = run(judge_args(server, "--annotate"), input_text=jsonl(*records))
        asked = len(server.requests)
        result, second = run(judge_args(server, "--annotate"), input_text=jsonl(*records))
        assert len(server.requests) == asked == 6
    assert [r["judge"] for r in first] == [r["judge"] for r in second]
    assert {r["judge"]["verdict"] for r in second} == {"keep", "drop"}
    assert "6 cached" in result.stderr


def test_cache_key_includes_rubrics_and_model():
    records = [task(1)]
    with CannedServer(lambda n: (200, {}, chat_completion(KEEP))) as server:
        run(judge_args(server), input_text=jsonl(*records))
        run(judge_args(server, "--rubrics", "Be strict."), input_text=jsonl(*records))
        run(judge_args(server, "--model", "other-judge"), input_text=jsonl(*records))
        run(judge_args(server, "--temperature", "0.3"), input_text=jsonl(*records))
        assert len(server.requests) == 4


def test_429_and_500_are_retried():
    script = [(429, {}, {"error": "slow"}), (500, {}, {"error": "boom"}),
              (200, {}, chat_completion(KEEP))]
    with CannedServer(lambda n: script[n]) as server:
        result, kept = run(judge_args(server), input_text=jsonl(task(1)))
    assert result.exit_code == 0, result.output
    assert len(kept) == 1 and "2 retries" in result.stderr


def test_an_endpoint_that_stays_down_stops_after_writing_what_was_judged():
    def reply(n):
        return (200, {}, chat_completion(KEEP)) if n < 2 else (503, {}, {"error": "down"})

    records = [task(i, f"q{i}") for i in range(5)]
    with CannedServer(reply) as server:
        result, kept = run(judge_args(server, "--retries", "1"), input_text=jsonl(*records))
        _, resumed = run(judge_args(server, "--retries", "1"), input_text=jsonl(*records))
    assert result.exit_code == 1
    assert [r["id"] for r in kept] == ["t0", "t1"]
    assert "did not answer" in result.output and "run again to resume" in result.output
    assert [r["id"] for r in resumed] == ["t0", "t1"]  # from the cache, then down again


def test_verdicts_answered_behind_a_failed_request_are_cached_for_the_resume():
    """Six records judged at once; the first one's request is refused (after the others have
    answered). The run stops at it, but the five verdicts already paid for are cached: the
    resume asks only for the first."""
    records = [task(i, f"q{i}") for i in range(6)]

    def first(n):  # the request is recorded before its reply is made
        return "q0" in json.dumps(server.requests[n]["body"])

    server = CannedServer(lambda n: (401, {}, {"error": {"message": "no"}}) if first(n) else
                          (200, {}, chat_completion(KEEP)), lambda n: 1.0 if first(n) else 0.0)
    with server:
        result, kept = run(judge_args(server, "--max-thread", "6"), input_text=jsonl(*records))
        assert result.exit_code == 1 and kept == [] and "refused the request" in result.output
    with CannedServer(lambda n: (200, {}, chat_completion(KEEP))) as again:
        result, kept = run(judge_args(again, "--max-thread", "6"), input_text=jsonl(*records))
        assert result.exit_code == 0 and len(kept) == 6
        assert len(again.requests) == 1 and "5 cached" in result.stderr


def test_sigterm_ends_the_filter_without_waiting_for_requests_in_flight(tmp_path):
    """Four judge requests the endpoint holds for 60 s; SIGTERM must not wait them out (nor
    their retries): the tool ends, 143, no output file. Before: it waited for every one."""
    records = tmp_path / "tasks.jsonl"
    records.write_text(jsonl(*(task(i, f"q{i}") for i in range(8))))
    out = tmp_path / "kept.jsonl"
    with CannedServer(lambda n: (200, {}, chat_completion(KEEP)), lambda n: 60) as server:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "trace-filter"), "--base-url", server.base_url,
             "--model", "m", "--max-thread", "4", "--no-cache", str(records), "-o", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while len(server.requests) < 4:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)  # the requests would take 60 s
    assert proc.returncode == 143 and "Terminated." in stderr and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".kept.jsonl*"))


def test_timeouts_are_retried():
    with CannedServer(lambda n: (200, {}, chat_completion(KEEP)),
                      delay=lambda n: 3 if n == 0 else 0) as server:
        result, kept = run(judge_args(server, "--timeout", "0.5"), input_text=jsonl(task(1)))
    assert result.exit_code == 0, result.output
    assert len(kept) == 1


@pytest.mark.parametrize("bad", ["not json at all", '{"verdict": "ke', '{"verdict": "maybe"}',
                                 "[1, 2]", ""])
def test_unparseable_verdicts_are_retried_then_counted_as_errors(bad):
    with CannedServer(lambda n: (200, {}, chat_completion(bad))) as server:
        result, kept = run(judge_args(server, "--parse-retries", "2"), input_text=jsonl(task(1)))
        assert len(server.requests) == 3
        _, annotated = run(judge_args(server, "--parse-retries", "0", "--annotate"),
                           input_text=jsonl(task(1)))
    # a judge that failed on every record it was asked about is a failed run (exit 1)
    assert result.exit_code == 1 and kept == []
    assert "1 error" in result.stderr and "t1: no verdict" in result.stderr
    assert "the judge gave no verdict: each of the 1 records it was asked about is an error" \
        in result.output
    assert annotated[0]["judge"]["verdict"] == "error"


def test_some_errors_among_verdicts_are_counted_and_the_run_succeeds(tmp_path):
    script = [KEEP, "garbage"]
    out = tmp_path / "kept.jsonl"
    with CannedServer(lambda n: (200, {}, chat_completion(script[n % 2]))) as server:
        result, _ = run(judge_args(server, "--parse-retries", "0", "-o", out),
                        input_text=jsonl(task(1), task(2, "q2")))
    assert result.exit_code == 0, result.output
    assert "1 kept" in result.stderr and "1 error" in result.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["t1"]


def test_a_judge_that_fails_on_every_record_leaves_no_output_file(tmp_path):
    out = tmp_path / "kept.jsonl"
    with CannedServer(lambda n: (200, {}, chat_completion("garbage"))) as server:
        result, _ = run(judge_args(server, "--parse-retries", "0", "-o", out),
                        input_text=jsonl(task(1), task(2, "q2")))
    assert result.exit_code == 1 and "the output file was not written" in result.output
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["cache"]


@pytest.mark.parametrize("content_type, body", [
    ("text/html", "<html><body>502 Bad Gateway</body></html>"),
    ("application/json", '{"choices": [{"mess'),
    ("application/json", "[1, 2]"),
    ("application/json", '{"choices": ["keep"]}'),
    ("application/json", '{"choices": [{"message": "keep"}]}'),
])
def test_a_malformed_200_reply_is_retried_then_an_error_verdict(content_type, body):
    """Proxies and gateways answer 200 with pages that are not chat completions."""
    def reply(n):
        return (200, {"content-type": content_type}, body) if n < 2 else \
            (200, {}, chat_completion(KEEP))

    with CannedServer(reply) as server:  # two bad replies, then a verdict: retried
        result, kept = run(judge_args(server), input_text=jsonl(task(1)))
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in kept] == ["t1"] and "2 retries" in result.stderr
    with CannedServer(lambda n: (200, {"content-type": content_type}, body)) as server:
        result, annotated = run(judge_args(server, "--retries", "1", "--annotate"),
                                input_text=jsonl(task(2, "q2"), task(3, "q3")))
        assert len(server.requests) == 4  # each record: a try and a retry, then its error
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert [r["judge"]["verdict"] for r in annotated] == ["error", "error"]
    reason = annotated[0]["judge"]["reason"]
    assert reason.startswith(f"{server.base_url}: malformed reply: the reply is ")
    assert "2 error" in result.stderr


def test_a_fenced_verdict_after_a_bad_one_is_accepted():
    script = ["garbage", "```json\n" + DROP + "\n```"]
    with CannedServer(lambda n: (200, {}, chat_completion(script[n]))) as server:
        result, dropped = run(judge_args(server, "--invert"), input_text=jsonl(task(1)))
        temperatures = [r["body"]["temperature"] for r in server.requests]
    assert [r["id"] for r in dropped] == ["t1"]
    assert temperatures == [0.0, 0.7]  # a retry samples; temperature 0 would repeat itself


def test_endpoints_without_structured_output_are_parsed_strictly():
    def reply(n):
        return (400, {}, {"error": {"message": "response_format is not supported"}}) if n == 0 \
            else (200, {}, chat_completion(KEEP))

    with CannedServer(reply) as server:
        result, kept = run(judge_args(server), input_text=jsonl(task(1), task(2, "q2")))
        assert "response_format" not in server.requests[1]["body"]
        assert "response_format" not in server.requests[2]["body"]
    assert len(kept) == 2


def test_a_refused_request_is_a_clear_error_without_the_key():
    secret = "sk-very-secret-key-123"
    with CannedServer(lambda n: (401, {}, {"error": {"message": f"bad key {secret}"}})) as server:
        result, _ = run(judge_args(server, "--api-key", secret), input_text=jsonl(task(1)))
    assert result.exit_code == 1
    assert "refused the request" in result.output and "HTTP 401" in result.output
    assert secret not in result.output


def test_seed_config_section_sets_the_judge(tmp_path):
    config = tmp_path / "seed.yaml"
    config.write_text(
        "astuner:\n  task_reader:\n    feedback_tracing:\n      alien_llm_model: seed-judge\n"
        "      alien_llm_response_length: 77\n      filters:\n        - type: llm_evaluate\n"
        "          enabled: true\n          params:\n            custom_rubrics: SEED RUBRIC\n"
        "            temperature: 0.5\n            max_thread: 3\n")
    with CannedServer(lambda n: (200, {}, chat_completion(KEEP))) as server:
        result, _ = run(["--config", config, "--base-url", server.base_url],
                        input_text=jsonl(task(1)))
        body = server.requests[0]["body"]
    assert result.exit_code == 0, result.output
    assert body["model"] == "seed-judge" and body["max_tokens"] == 77
    assert body["temperature"] == 0.5 and "SEED RUBRIC" in body["messages"][0]["content"]


def test_unordered_writes_every_record_once():
    records = [task(i, f"q{i}") for i in range(20)]
    with CannedServer(lambda n: (200, {}, chat_completion(KEEP)),
                      delay=lambda n: 0.05 * (n % 3)) as server:
        result, kept = run(["--base-url", server.base_url, "--model", "m", "--max-thread", "4",
                            "--unordered"], input_text=jsonl(*records))
    assert sorted(r["id"] for r in kept) == sorted(r["id"] for r in records)


# --- the real judge --------------------------------------------------------------------------

@pytest.mark.vllm
def test_real_vllm_judge_gives_a_verdict_for_each_record(vllm_server, legacy_tasks):
    lines = legacy_tasks.read_text().splitlines()[:3]
    args = ["--base-url", vllm_server.base_url, "--model", "smollm2-135m", "--annotate",
            "--max-tokens", "64", "--max-thread", "3", "--rubrics",
            "1. Check the answer and drop the task if it does not answer or answer is wrong."]
    result, records = run(args, input_text="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    assert len(records) == 3
    assert all(r["judge"]["verdict"] in ("keep", "drop", "error") for r in records)
    assert all(r["judge"]["model"] == "smollm2-135m" for r in records)
    again, _ = run(args, input_text="\n".join(lines) + "\n")
    judged = sum(r["judge"]["verdict"] != "error" for r in records)
    assert f"{judged} cached" in again.stderr


def test_a_rubrics_file_that_is_not_there_is_a_usage_error():
    result, _ = run(["--rubrics", "rubircs.txt"], input_text=jsonl(task(1)))
    assert result.exit_code == 2 and "no such file: rubircs.txt" in result.output


def test_records_the_rules_settle_start_no_judge(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("TRACEWHEEL_VLLM_PYTHON", "/nonexistent/python")  # would fail if started
    result, kept = run(["--require-boxed"], input_text=jsonl(task(1, answer="no box")))
    assert result.exit_code == 0, result.output
    assert kept == [] and "serving" not in result.output


@pytest.mark.vllm
@pytest.mark.slow
def test_with_no_endpoint_the_embedded_model_judges(monkeypatch, embedded_model_dir):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    result, records = run(["--annotate", "--max-tokens", "48"],
                          input_text=jsonl(task(1, "What is 2+2?", "\\boxed{4}")))
    assert result.exit_code == 0, result.output
    assert "no --base-url: serving smollm2-135m with vLLM" in result.stderr
    assert records[0]["judge"]["model"] == "smollm2-135m"
    assert records[0]["judge"]["verdict"] in ("keep", "drop", "error")


def test_without_vllm_the_judge_says_once_how_to_give_it_an_endpoint(monkeypatch, no_vllm_here):
    """A pip install without vLLM: one line, once (not once per judge thread), naming
    --base-url and the environment variable."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    result, _ = run(["--max-thread", "4", "--no-cache"],
                    input_text=jsonl(*(task(i, f"q{i}") for i in range(8))))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.count("serving") == 1, result.output
    assert result.output.count("no vLLM to serve the model") == 1
    assert "--base-url" in result.output and "OPENAI_BASE_URL" in result.output


def test_the_verdict_cache_follows_xdg_unless_flywheel_cache_says(tmp_path, monkeypatch):
    monkeypatch.delenv("TRACEWHEEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with CannedServer(lambda n: (200, {}, chat_completion(KEEP))) as server:
        result, _ = run(judge_args(server), input_text=jsonl(task(1)))
        assert result.exit_code == 0, result.output
        assert (tmp_path / "xdg" / "tracewheel" / "trace-filter" / "cache.sqlite").is_file()
        monkeypatch.setenv("TRACEWHEEL_CACHE", str(tmp_path / "own"))
        run(judge_args(server), input_text=jsonl(task(1)))
    assert (tmp_path / "own" / "trace-filter" / "cache.sqlite").is_file()


def test_a_bad_regular_expression_is_a_usage_error_naming_the_option():
    result, _ = run(["--no-judge", "--require-regex", "("], input_text=jsonl(task(1)))
    assert result.exit_code == 2
    assert "Invalid value for '--require-regex': not a regular expression: missing )" \
        in result.output


def test_with_no_cache_a_failed_run_does_not_promise_a_cache():
    with CannedServer(lambda n: (503, {}, {"error": "down"})) as server:
        result, _ = run(judge_args(server, "--retries", "0", "--no-cache"),
                        input_text=jsonl(task(1)))
    assert result.exit_code == 1
    assert "cached" not in result.output and "with --no-cache a new run asks again" \
        in result.output


@pytest.mark.parametrize("command", [[], ["learn-rubrics"]])
def test_cache_and_no_cache_together_are_refused(tmp_path, command):
    """The asking options are declared once, for every tool that asks a model: so is the check
    (task-augment refused the pair; trace-filter took both)."""
    result, _ = run([*command, "--cache", tmp_path / "c.sqlite", "--no-cache", "--no-judge"
                     if not command else "--no-structured"], input_text="")
    assert result.exit_code == 2
    assert "--cache and --no-cache cannot be used together" in result.output
    assert not (tmp_path / "c.sqlite").exists()
