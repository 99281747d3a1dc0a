"""task-augment: the generation modes against injected faults and scripted replies (a canned
local server: retries, strict parsing, dedup, the cache), then each mode with the real vLLM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from canned import CannedServer, chat_completion
from click.testing import CliRunner

from tracewheel.ask import ReplyError
from tracewheel.config import tool_dir
from tracewheel_task_augment.cli import main as task_augment
from tracewheel_task_augment.documents import chunk_blocks, markdown_blocks
from tracewheel_task_augment.replies import parse_reply

ROOT = Path(__file__).resolve().parent.parent
README = tool_dir("task-augment") / "README.md"
MODEL = "smollm2-135m"

SEEDS = [
    ("s1", "Tom has 3 apples and buys 5 more. How many apples does he have now?", "8"),
    ("s2", "A train travels 60 km in 1 hour. How far does it go in 4 hours?", "240"),
    ("s3", "Mia reads 12 pages a day. How many pages does she read in a week?", "84"),
]
NEW = [
    "Sara bakes 4 trays of 9 cookies each. How many cookies does she bake in total?",
    "A pool fills at 30 liters per minute. How long does it take to fill 900 liters?",
    "Ben saves 7 dollars a week for 6 weeks. How much money has he saved by then?",
    "A farmer plants 15 rows of 20 trees. How many trees are in the orchard now?",
    "Lena runs 5 km every morning. How many kilometers does she run in 30 days?",
    "A box holds 24 pens and a class needs 100 pens. How many boxes must they buy?",
    "Omar pays 45 dollars for 3 shirts. What does one shirt cost if all cost the same?",
    "A recipe needs 250 g of flour per cake. How much flour is needed for 6 cakes?",
]
MANUAL = """\
# Widget manual

## Installing

Unpack the widget and plug it into a wall socket. The green light turns on after
ten seconds, which means the widget is ready.

## Cleaning

Wipe the widget with a dry cloth once a week. Never put the widget in water.
"""


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEWHEEL_CACHE", str(tmp_path / "cache"))


def task(i, query, reference=None, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": query}]
    return {"id": i, "query": query, "messages": messages, "answer": None,
            "reference": reference, "keep_me": {"x": 1}}


def seeds_jsonl(**extra):
    return "".join(json.dumps(task(i, q, r, **extra)) + "\n" for i, q, r in SEEDS)


def reply(*queries, **fields):
    return (200, {}, chat_completion(json.dumps(
        {"tasks": [{"query": q, **fields} for q in queries]})))


def run(args, input_text=None):
    result = CliRunner().invoke(task_augment, [str(a) for a in args], input=input_text)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, records


def endpoint(server, *more):
    return ["--base-url", server.base_url, "--model", "m", "--retries", "2", *more]


def counts(stderr):
    """The summary line's counts: {"produced": 4, "duplicate": 2, ...}."""
    line = [s for s in stderr.splitlines() if s.startswith("task-augment: ") and " in " in s][-1]
    return {k: int(n) for n, k in re.findall(r"(\d+) ([a-z][a-z -]*?)(?= \(|,| in )", line)}


def new_tasks(n=0):
    """A server that answers each request with the next two new tasks."""
    def answer(i):
        return reply(NEW[(2 * i + n) % len(NEW)], NEW[(2 * i + n + 1) % len(NEW)])
    return answer


# --- expand ----------------------------------------------------------------------------------

def test_expand_writes_new_tasks_with_provenance_and_stable_ids():
    with CannedServer(new_tasks()) as server:
        result, records = run(["expand", "-n", "4", "--per-request", "2",
                               *endpoint(server)], seeds_jsonl(system="Be brief."))
        body = server.requests[0]["body"]
    assert result.exit_code == 0, result.output
    assert sorted(r["query"] for r in records) == sorted(NEW[:4])
    for r in records:
        assert r["augment"]["method"] == "expand"
        assert set(r["augment"]["parents"]) <= {"s1", "s2", "s3"} and r["augment"]["parents"]
        assert r["augment"]["model"] == "m"
        assert r["messages"] == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": r["query"]}]
        assert r["id"].startswith("aug-") and r["reference"] is None
    assert len({r["id"] for r in records}) == 4
    assert counts(result.stderr)["produced"] == 4 and counts(result.stderr)["read"] == 3
    assert body["response_format"]["type"] == "json_schema"
    assert "seed" not in body  # only with --request-seeds
    shown = body["messages"][1]["content"]
    assert sum(q in shown for _, q, _ in SEEDS) == 3  # the few shots are in the prompt


def test_expand_as_a_function_of_its_configs(tmp_path):
    """What the command runs is run.run_expand over two configs, which other code can build."""
    import io

    from tracewheel.client import Endpoint
    from tracewheel_task_augment import run as augment
    from tracewheel_task_augment.config import ExpandConfig, GenerationConfig

    out = tmp_path / "more.jsonl"
    with CannedServer(new_tasks()) as server:
        gen = GenerationConfig(endpoint=Endpoint(server.base_url, "m"), use_cache=False,
                               use_history=False, structured=False)
        augment.run_expand(gen, ExpandConfig(count=2, per_request=2), io.BytesIO(
            seeds_jsonl().encode()), str(out), quiet=True)
        body = server.requests[0]["body"]
    assert sorted(json.loads(line)["query"] for line in out.read_text().splitlines()) == \
        sorted(NEW[:2])
    assert "response_format" not in body and not (tmp_path / "cache.sqlite").exists()


def test_expand_rejects_copies_light_edits_and_repeats():
    light_edit = SEEDS[0][1].replace("Tom", "Tim")
    with CannedServer(lambda n: reply(SEEDS[1][1].upper(), light_edit, NEW[0], NEW[0] + " ",
                                      NEW[1])) as server:
        result, records = run(["expand", "-n", "2", "--per-request", "5", *endpoint(server)],
                              seeds_jsonl())
    assert result.exit_code == 0, result.output
    assert [r["query"] for r in records] == NEW[:2]
    assert "3 duplicate (1 exact input, 1 near input, 1 exact generated)" in result.stderr


def test_expand_rejects_off_spec_tasks():
    with CannedServer(lambda n: reply("", "Hi?", "Поезд проходит 60 км за один час. Какое "
                                      "расстояние он пройдёт за четыре часа?",
                                      NEW[2])) as server:
        result, records = run(["expand", "-n", "1", "--per-request", "5", *endpoint(server)],
                              seeds_jsonl())
    assert [r["query"] for r in records] == [NEW[2]]
    assert re.search(r"3 off-spec \((?=.*1 empty)(?=.*1 too short)(?=.*1 wrong language)",
                     result.stderr)


def test_dedup_against_a_corpus_and_earlier_runs(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps(task("c1", NEW[0])) + "\n")
    args = ["expand", "--per-request", "2", "--max-thread", "1"]
    with CannedServer(new_tasks()) as server:
        first, written = run([*args, "-n", "3", "--against", corpus, *endpoint(server)],
                             seeds_jsonl())
    # Another seed (no cache hits), the same replies: repeats of the first run's tasks.
    with CannedServer(new_tasks()) as server:
        again, repeated = run([*args, "-n", "2", "--seed", "1", "--max-attempts", "2",
                               "--against", corpus, *endpoint(server)], seeds_jsonl())
    # Without the history they are new again.
    with CannedServer(new_tasks()) as server:
        forgot, fresh = run([*args, "-n", "2", "--seed", "2", "--no-history", *endpoint(server)],
                            seeds_jsonl())
    assert [r["query"] for r in written] == NEW[1:4]
    assert "1 duplicate (1 exact corpus)" in first.stderr
    assert repeated == [] and again.exit_code == 0
    assert "4 duplicate (3 exact generated, 1 exact corpus)" in again.stderr
    assert "stopped at 0 of 2 tasks after 2 attempts" in again.stderr
    assert [r["query"] for r in fresh] == NEW[:2]


def test_a_cached_rerun_makes_no_requests_and_writes_the_same_tasks():
    args = ["expand", "-n", "5", "--per-request", "2", "--max-thread", "3"]
    with CannedServer(new_tasks()) as server:
        first, records = run([*args, *endpoint(server)], seeds_jsonl())
        made = len(server.requests)
        again, same = run([*args, *endpoint(server)], seeds_jsonl())
        assert len(server.requests) == made  # not one request
        other, _ = run([*args, "--temperature", "0.5", *endpoint(server)], seeds_jsonl())
        assert len(server.requests) > made  # another setting asks again
    assert first.exit_code == 0 and again.exit_code == 0, again.output
    assert same == records and len(records) == 5
    assert counts(again.stderr)["requests"] == 0
    assert counts(again.stderr)["cached"] == counts(first.stderr)["requests"]


def test_429_500_and_timeouts_are_retried():
    script = [(429, {}, {"error": "slow"}), (500, {}, {"error": "boom"})]

    def answer(n):
        return script[n] if n < 2 else reply(*NEW[2 * (n - 2): 2 * (n - 2) + 2])

    with CannedServer(answer, delay=lambda n: 2 if n == 2 else 0) as server:
        result, records = run(["expand", "-n", "2", "--per-request", "2", "--timeout", "0.5",
                               *endpoint(server, "--retries", "3")], seeds_jsonl())
    assert result.exit_code == 0, result.output
    assert len(records) == 2
    assert counts(result.stderr)["retries"] == 3 and counts(result.stderr)["requests"] == 4


@pytest.mark.parametrize("bad", ["not json at all", '{"tasks": [{"query": "Sara bak',
                                 '{"tasks": [{"text": "no query field"}]}', '{"tasks": []}',
                                 '[{"query": "a list, not an object"}]',
                                 'Sure! {"tasks": [{"query": "chatter around it"}]}', ""])
def test_malformed_replies_are_retried_then_counted_never_written(bad):
    with CannedServer(lambda n: (200, {}, chat_completion(bad))) as server:
        result, records = run(["expand", "-n", "2", "--per-request", "2", "--max-attempts",
                               "2", "--parse-retries", "1", *endpoint(server)], seeds_jsonl())
        temperatures = [r["body"]["temperature"] for r in server.requests]
    assert result.exit_code == 0, result.output
    assert records == []
    assert counts(result.stderr)["unparseable"] == 2 and counts(result.stderr)["requests"] == 4
    assert sorted(temperatures) == [0.8, 0.8, 0.8, 0.8]  # retries sample at >= 0.7


def test_a_good_reply_after_a_bad_one_is_used():
    script = [(200, {}, chat_completion("{oops")),
              (200, {}, chat_completion("```json\n" + json.dumps(
                  {"tasks": [{"query": NEW[0]}]}) + "\n```"))]
    with CannedServer(lambda n: script[n]) as server:
        result, records = run(["expand", "-n", "1", "--per-request", "1", "--temperature", "0",
                               "--request-seeds", *endpoint(server)], seeds_jsonl())
        temperatures = [r["body"]["temperature"] for r in server.requests]
        seeds = [r["body"]["seed"] for r in server.requests]
    assert [r["query"] for r in records] == [NEW[0]]
    assert temperatures == [0.0, 0.7] and seeds[0] != seeds[1]
    assert counts(result.stderr)["unparseable"] == 0


def test_truncated_replies_are_named_in_verbose_mode():
    cut = chat_completion('{"tasks": [{"query": "A very long ta')
    cut["choices"][0]["finish_reason"] = "length"
    with CannedServer(lambda n: (200, {}, cut)) as server:
        result, records = run(["expand", "-n", "1", "--per-request", "1", "--max-attempts",
                               "1", "--parse-retries", "0", "-v", *endpoint(server)],
                              seeds_jsonl())
    assert records == []
    assert "1 unparseable (1 truncated)" in result.stderr
    assert "cut off at --max-tokens" in result.stderr


def test_endpoints_without_structured_output_are_parsed_strictly():
    def answer(n):
        if n == 0:
            return 400, {}, {"error": {"message": "response_format is not supported"}}
        return reply(NEW[n])

    with CannedServer(answer) as server:
        result, records = run(["expand", "-n", "2", "--per-request", "1", "--max-thread", "1",
                               *endpoint(server)], seeds_jsonl())
        later = [r["body"] for r in server.requests[1:]]
    assert result.exit_code == 0, result.output
    assert len(records) == 2 and all("response_format" not in b for b in later)


def test_an_endpoint_that_stays_down_is_one_clear_error_without_the_key(tmp_path):
    secret = "sk-very-secret-key-123"
    out = tmp_path / "more.jsonl"
    with CannedServer(lambda n: (503, {}, {"error": f"down {secret}"})) as server:
        result, _ = run(["expand", "-n", "2", "-o", out, *endpoint(server, "--retries", "1"),
                         "--api-key", secret], seeds_jsonl())
    assert result.exit_code == 1
    assert "the endpoint did not answer" in result.output and "HTTP 503" in result.output
    assert "run again to resume" in result.output and secret not in result.output
    assert not out.exists()


def test_no_examples_is_no_work_and_starts_no_model(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("TRACEWHEEL_VLLM_PYTHON", "/nonexistent/python")  # would fail if started
    follow_up = {"id": "f", "query": "Thanks!", "messages": [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Thanks!"}]}
    result, records = run(["expand", "-n", "3"], json.dumps(follow_up) + "\n")
    assert result.exit_code == 0, result.output
    assert records == [] and "nothing to expand" in result.stderr
    assert "1 skipped (1 follow-up or empty request)" in result.stderr


def test_expand_is_the_default_subcommand():
    with CannedServer(new_tasks()) as server:
        result, records = run(["-n", "2", "--per-request", "2", *endpoint(server)],
                              seeds_jsonl())
    assert result.exit_code == 0, result.output
    assert [r["augment"]["method"] for r in records] == ["expand", "expand"]


# --- paraphrase ------------------------------------------------------------------------------

def test_paraphrase_keeps_reference_system_and_numbers():
    rewordings = {
        SEEDS[0][1]: ["If Tom buys 5 more apples when he already has 3, what is his total now?",
                      "Tom has 4 apples and buys 5 more. How many apples?"],  # a number changed
        SEEDS[1][1]: ["Going 60 km in 1 hour, what distance does a train cover in 4 hours?"],
        SEEDS[2][1]: ["Over a week, how many pages will Mia read at 12 pages every day?"],
    }

    def answer(n):
        prompt = server.requests[n]["body"]["messages"][1]["content"]
        return reply(*rewordings[prompt.split("<request>\n")[1].split("\n</request>")[0]])

    with CannedServer(answer) as server:
        result, records = run(["paraphrase", "-n", "1", "--max-attempts", "1",
                               *endpoint(server)], seeds_jsonl(system="Use \\boxed{}."))
    assert result.exit_code == 0, result.output
    assert [r["augment"]["parents"] for r in records] == [["s1"], ["s2"], ["s3"]]
    assert [r["reference"] for r in records] == ["8", "240", "84"]
    assert [r["query"] for r in records] == [rewordings[q][0] for _, q, _ in SEEDS]
    assert all(r["messages"][0] == {"role": "system", "content": "Use \\boxed{}."}
               for r in records)
    assert all(r["augment"]["method"] == "paraphrase" for r in records)


def test_paraphrase_asks_again_for_what_is_missing_and_rejects_changed_numbers():
    good = ["After buying 5 more apples, how many does Tom have if he had 3?",
            "Tom had 3 apples, then got 5 more by buying them. What is his count now?"]
    script = [reply(good[0], "Tom has 3 apples and buys 6 more. How many apples does he have?"),
              reply(good[1])]
    with CannedServer(lambda n: script[n]) as server:
        result, records = run(["paraphrase", "-n", "2", *endpoint(server)],
                              json.dumps(task("s1", SEEDS[0][1], "8")) + "\n")
        second = server.requests[1]["body"]["messages"]
    assert [r["query"] for r in records] == good
    assert "1 off-spec (1 numbers changed)" in result.stderr
    assert "Rewrite the request 1 time." in second[0]["content"]  # only what is missing
    assert good[0] in second[1]["content"]  # listed as already written


def test_paraphrase_rejects_the_original_and_light_edits_of_it():
    with CannedServer(lambda n: reply(SEEDS[0][1], SEEDS[0][1].replace("Tom", "Tim"))) \
            as server:
        result, records = run(["paraphrase", "-n", "2", "--max-attempts", "1",
                               *endpoint(server)], json.dumps(task("s1", SEEDS[0][1])) + "\n")
    assert records == []
    assert "2 duplicate (1 exact input, 1 near input)" in result.stderr
    assert "1 short of -n" in result.stderr


# --- docs ------------------------------------------------------------------------------------

def test_markdown_is_chunked_at_headings_with_sections_and_lines():
    chunks = chunk_blocks(list(markdown_blocks(MANUAL)), "manual.md", 200)
    assert [c.section for c in chunks] == ["Widget manual > Installing",
                                           "Widget manual > Cleaning"]
    assert chunks[0].lines == (1, 6) and chunks[1].lines == (8, 10)  # headings included
    assert "green light" in chunks[0].text and "dry cloth" in chunks[1].text


def test_docs_keep_excerpt_source_and_a_supported_reference(tmp_path):
    doc = tmp_path / "manual.md"
    doc.write_text(MANUAL)

    def answer(n):
        prompt = server.requests[n]["body"]["messages"][1]["content"]
        if "green light" in prompt:
            return reply("How long after plugging in the widget does its green light turn on?",
                         answer="ten seconds",
                         evidence="the green light turns on after ten seconds")
        return reply("How should a widget be cleaned, and how often?",
                     answer="with a wet sponge", evidence="Wipe the widget with a dry cloth")

    with CannedServer(answer) as server:
        result, records = run(["docs", doc, "-n", "2", "--per-request", "1",
                               "--chunk-size", "200", *endpoint(server)])
    assert result.exit_code == 0, result.output
    by = {r["augment"]["source"]["section"]: r for r in records}
    install, clean = by["Widget manual > Installing"], by["Widget manual > Cleaning"]
    assert install["reference"] == "ten seconds"
    assert install["augment"]["source"]["excerpt"] == "The green light turns on after\nten seconds"
    assert install["augment"]["source"]["document"] == str(doc)
    assert install["augment"]["source"]["lines"] == [1, 6]
    assert len(install["augment"]["source"]["sha256"]) == 64
    assert clean["reference"] is None  # the quote does not hold that answer
    assert clean["augment"]["source"]["excerpt"] == "Wipe the widget with a dry cloth"
    assert "1 with reference" in result.stderr


def test_docs_reject_questions_that_point_at_the_excerpt(tmp_path):
    doc = tmp_path / "manual.txt"
    doc.write_text("The widget weighs 2 kg and is 30 cm long.\n")
    with CannedServer(lambda n: reply("What does the excerpt say the widget weighs?",
                                      answer="2 kg", evidence=None)) as server:
        result, records = run(["docs", doc, "-n", "1", "--max-attempts", "1",
                               *endpoint(server)])
    assert records == [] and "1 off-spec (1 not self-contained)" in result.stderr


# --- the strict reader -----------------------------------------------------------------------

def test_parse_reply_is_strict():
    assert parse_reply('```json\n{"tasks": [{"query": "q"}]}\n```', "expand") == [{"query": "q"}]
    assert parse_reply('{"tasks": [{"query": "q"}]}', "docs") == [
        {"query": "q", "answer": None, "evidence": None}]
    for bad, reason in [('{"tasks": [{"query": 3}]}', "wrong shape"),
                        ('x {"tasks": [{"query": "q"}]}', "not JSON"),
                        ('{"tasks": "q"}', "wrong shape"), ("  ", "empty")]:
        with pytest.raises(ReplyError) as err:
            parse_reply(bad, "expand")
        assert err.value.reason == reason


def test_readme_shows_each_subcommands_help():
    readme = README.read_text()
    for sub in ("expand", "paraphrase", "docs"):
        result = CliRunner().invoke(task_augment, [sub, "--help"], terminal_width=100)
        assert result.output.rstrip() in readme, f"task-augment {sub} --help is out of date"


# --- the real model --------------------------------------------------------------------------

def real(server, *more):
    return ["--base-url", server.base_url, "--model", MODEL, "--max-tokens", "160",
            "--max-thread", "4", "--temperature", "1.0", *more]


def check_accounting(result, records, method):
    assert result.exit_code == 0, result.output
    c = counts(result.stderr)
    assert c["produced"] == len(records)
    assert all(r["augment"]["method"] == method and r["augment"]["model"] == MODEL
               for r in records)
    assert len({r["id"] for r in records}) == len(records)
    return c


@pytest.mark.vllm
def test_real_vllm_expand_and_cached_rerun(vllm_server):
    # Sampled at temperature 1 without seeds: room for a few attempts whose tasks are all off
    # spec (too short), which happened once in 4 attempts.
    args = ["expand", "-n", "3", "--per-request", "2", "--max-attempts", "12",
            *real(vllm_server)]
    result, records = run(args, seeds_jsonl())
    c = check_accounting(result, records, "expand")
    assert records, result.stderr  # guided JSON: the small model does write tasks
    assert c["requests"] >= 2
    again, same = run(args, seeds_jsonl())
    assert same == records and counts(again.stderr)["requests"] == 0


@pytest.mark.vllm
def test_real_vllm_paraphrase(vllm_server):
    result, records = run(["paraphrase", "-n", "1", "--max-attempts", "2", *real(vllm_server)],
                          seeds_jsonl())
    check_accounting(result, records, "paraphrase")
    references = {i: r for i, _, r in SEEDS}
    assert all(r["reference"] == references[r["augment"]["parents"][0]] for r in records)


@pytest.mark.vllm
def test_real_vllm_docs(vllm_server, tmp_path):
    doc = tmp_path / "manual.md"
    doc.write_text(MANUAL)
    result, records = run(["docs", doc, "-n", "2", "--per-request", "1", "--max-attempts", "4",
                           *real(vllm_server)])
    check_accounting(result, records, "docs")
    assert records, result.stderr
    for r in records:
        source = r["augment"]["source"]
        assert source["document"] == str(doc) and source["excerpt"] in MANUAL


@pytest.mark.parametrize("content_type, body", [
    ("text/html", "<html><body>502 Bad Gateway</body></html>"),
    ("application/json", '{"choices": [{"mess'),
    ("application/json", "[1, 2]"),
    ("application/json", '{"choices": ["keep"]}'),
    ("application/json", '{"choices": [{"message": "keep"}]}'),
])
def test_a_malformed_200_reply_is_retried_then_one_clear_error(tmp_path, content_type, body):
    """A gateway's page in place of a chat completion: retried like a 5xx, then one line."""
    out = tmp_path / "more.jsonl"
    with CannedServer(lambda n: (200, {"content-type": content_type}, body)) as server:
        result, _ = run(["expand", "-n", "2", "--max-thread", "1", "-o", out,
                         *endpoint(server, "--retries", "1")], seeds_jsonl())
        assert len(server.requests) % 2 == 0  # every request was retried once
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "the endpoint did not answer" in result.output
    assert f"{server.base_url}: malformed reply: the reply is " in result.output
    assert not out.exists()
    with CannedServer(lambda n: (200, {"content-type": content_type}, body) if n == 0
                      else reply(NEW[0], NEW[1])) as server:
        result, records = run(["expand", "-n", "2", *endpoint(server)], seeds_jsonl())
    assert result.exit_code == 0, result.output
    assert len(records) == 2 and "1 retries" in result.stderr


def test_an_oversized_task_is_clipped_in_its_request(tmp_path):
    huge = "How many apples? " + "blah " * 1_000_000  # a 5 MB task
    seeds = seeds_jsonl() + json.dumps(task("big", huge)) + "\n"
    with CannedServer(new_tasks()) as server:
        result, records = run(["paraphrase", "-n", "1", *endpoint(server)], seeds)
        sizes = [len(json.dumps(r["body"])) for r in server.requests]
    assert result.exit_code == 0, result.output
    assert max(sizes) < 20_000  # the task is clipped (head and tail), not sent whole
    assert any("characters left out" in json.dumps(r["body"]) for r in server.requests)


def test_a_refused_request_is_counted_and_the_run_goes_on():
    def answer(n):
        if n == 0:
            return 413, {}, {"error": {"message": "request too large"}}
        return reply(NEW[n % len(NEW)])

    with CannedServer(answer) as server:
        result, records = run(["paraphrase", "-n", "1", "--max-thread", "1",
                               *endpoint(server)], seeds_jsonl())
    assert result.exit_code == 0, result.output
    assert "1 refused (1 HTTP 413)" in result.stderr
    assert counts(result.stderr)["requests"] >= 2


def test_a_refused_request_echoing_the_key_does_not_print_it():
    key = "sk-augment-secret-3"

    def answer(n):
        if n == 0:
            return 400, {}, {"error": {"message": f"bad request from Bearer {key}"}}
        return reply(NEW[n % len(NEW)])

    with CannedServer(answer) as server:
        result, _ = run(["paraphrase", "-n", "1", "--max-thread", "1", *endpoint(server),
                         "--api-key", key], seeds_jsonl())
    assert result.exit_code == 0, result.output
    assert "request refused" in result.stderr and "bad request from Bearer ***" in result.stderr
    assert key not in result.stderr and key not in result.stdout


def test_a_run_that_fails_says_what_was_written_and_whether_it_was_cached(tmp_path):
    with CannedServer(lambda n: (503, {}, {"error": "down"})) as server:
        result, _ = run(["expand", "-n", "2", "--no-cache", *endpoint(server, "--retries", "0")],
                        seeds_jsonl())
    assert result.exit_code == 1
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "0 tasks were written before it" in error
    assert "cached" not in error and "with --no-cache a new run asks again" in error
