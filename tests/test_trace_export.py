"""trace-export against real Studio databases and their manifests (ground truth written when the
databases were made), copied from the team's shared fixtures into tests/fixtures/studio."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracewheel.records import validate_task
from tracewheel_trace_export.cli import main as trace_export
from tracewheel_trace_export.reprparse import ReprError, parse_msg, parse_repr

from conftest import load_script

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "studio"
DATABASES = sorted(FIXTURES.glob("*.sqlite"))
LEGACY_DB = FIXTURES / "studio-1.0.5_agentscope-1.0.7.sqlite"
OTEL_DB = FIXTURES / "studio-1.0.9_agentscope-1.0.21.sqlite"


def test_all_three_fixture_databases_are_here():
    assert [p.name for p in DATABASES] == [
        "studio-1.0.5_agentscope-1.0.7.sqlite",
        "studio-1.0.9_agentscope-1.0.21.sqlite",
        "studio-1.0.9_agentscope-2.x.sqlite",
    ]


def export(*args, ok=True):
    result = CliRunner().invoke(trace_export, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, records


def manifest(db: Path) -> dict:
    return json.loads(db.with_suffix(".manifest.json").read_text())


def expected_query(turn: dict) -> str:
    given = turn["input"]
    return given["text"] if given["kind"] == "user" else given["messages"][-1]["text"]


@pytest.fixture(scope="module", params=DATABASES, ids=lambda p: p.stem)
def exported(request):
    _, records = export(request.param)
    by_run = defaultdict(list)
    for record in records:
        by_run[record["source"]["run_id"]].append(record)
    return manifest(request.param), by_run, records


def test_every_record_is_a_valid_task(exported):
    _, _, records = exported
    for record in records:
        validate_task(record)
    assert len({r["id"] for r in records}) == len(records)


def test_every_turn_is_found_with_its_exact_text_agent_project_and_run_name(exported):
    truth, by_run, _ = exported
    for run in truth["runs"]:
        got = by_run[run["run_id"]]
        assert len(got) == len(run["turns"]), run["run_id"]
        for turn, record in zip(run["turns"], got, strict=True):
            assert record["query"] == expected_query(turn)
            assert record["source"]["agent"] == turn["agent"]
            assert record["source"]["project"] == run["project"]
            assert record["source"]["run_name"] == run["run_name"]
        queries = [r["query"] for r in got]
        for user_turn in run["user_turns"]:
            assert user_turn["text"] in queries


def test_answers_are_exact_and_failed_turns_have_none(exported):
    truth, by_run, _ = exported
    for run in truth["runs"]:
        for turn, record in zip(run["turns"], by_run[run["run_id"]], strict=True):
            if turn["error"]:
                assert record["answer"] is None
                assert record["status"] == "error" and record["error"]
            else:
                assert record["answer"] == turn["scripted_final_answer"]
                assert record["status"] == "ok"


def test_llm_and_tool_calls_are_counted_and_errors_marked(exported):
    truth, by_run, _ = exported
    for run in truth["runs"]:
        for turn, record in zip(run["turns"], by_run[run["run_id"]], strict=True):
            llm = [c for c in record["trajectory"] if c["type"] == "llm"]
            tools = [c for c in record["trajectory"] if c["type"] == "tool" and not c["framework"]]
            assert len(llm) == turn["llm_calls"] == record["source"]["llm_calls"]
            assert len(tools) == turn["tool_calls"] == record["source"]["tool_calls"]
            assert sum(c["status"] == "error" for c in llm) == turn["llm_errors"]
            assert [t["name"] for t in tools] == [d["name"] for d in turn["tool_calls_detail"]]
            assert [t["arguments"] for t in tools] == [d["arguments"]
                                                      for d in turn["tool_calls_detail"]]
            assert all(t["result"] is not None for t in tools)


def test_feedback_is_what_came_next_for_the_same_agent(exported):
    truth, by_run, _ = exported
    for run in truth["runs"]:
        records = by_run[run["run_id"]]
        for i, (turn, record) in enumerate(zip(run["turns"], records, strict=True)):
            later = [t for t in run["turns"][i + 1:] if t["agent"] == turn["agent"]]
            feedback = [m["content"] for m in record["feedback"]]
            if later:
                assert expected_query(later[0]) == feedback[-1]
            else:
                assert feedback == []


def test_user_feedback_lands_on_the_turn_it_judges(exported):
    """'That's wrong, the answer is 48.' is feedback on the answer before it."""
    truth, by_run, _ = exported
    seen = 0
    for run in truth["runs"]:
        records = by_run[run["run_id"]]
        for i, turn in enumerate(run["turns"]):
            if turn["user_feedback_in_this_input"] and turn["input"]["kind"] == "user":
                previous = records[i - 1]
                assert previous["feedback"][-1]["content"] == turn["input"]["text"]
                seen += 1
    assert seen >= 5


def test_context_ends_with_the_request_and_keeps_the_system_prompt(exported):
    _, _, records = exported
    for record in records:
        assert record["messages"][0]["role"] == "system"
        assert record["query"] in record["messages"][-1]["content"]


def test_multi_turn_context_includes_earlier_turns(exported):
    truth, by_run, _ = exported
    run = next(r for r in truth["runs"] if "4_turns" in r["tags"])
    records = by_run[run["run_id"]]
    last = records[-1]
    contents = [m.get("content") or "" for m in last["messages"]]
    for earlier in records[:-1]:
        assert earlier["query"] in contents


def test_units_call_and_run(exported):
    truth, _, records = exported
    db = FIXTURES / truth["file"]
    _, calls = export(db, "--unit", "call")
    assert len(calls) == sum(len([c for c in r["trajectory"] if c["type"] == "llm"])
                             for r in records)
    assert all(len(c["trajectory"]) == 1 for c in calls)
    _, runs = export(db, "--unit", "run")
    assert len(runs) == len(truth["runs"])
    assert len({r["id"] for r in calls}) == len(calls)


def test_ids_are_stable_across_runs():
    _, first = export(LEGACY_DB)
    _, second = export(LEGACY_DB)
    assert [r["id"] for r in first] == [r["id"] for r in second]


def test_filters():
    truth = manifest(LEGACY_DB)
    _, staged = export(LEGACY_DB, "--project", "math-agent-staging")
    assert staged and {r["source"]["project"] for r in staged} == {"math-agent-staging"}
    _, batch = export(LEGACY_DB, "--run", "eval-batch-01")
    assert len(batch) == sum(len(r["turns"]) for r in truth["runs"]
                             if r["run_name"] == "eval-batch-01")
    _, checker = export(LEGACY_DB, "--agent", "Checker")
    assert len(checker) == 2 and {r["source"]["agent"] for r in checker} == {"Checker"}
    _, failed = export(LEGACY_DB, "--status", "error")
    assert len(failed) == sum(1 for r in truth["runs"] for t in r["turns"] if t["error"])
    _, everything = export(LEGACY_DB)
    times = sorted(r["source"]["time"] for r in everything)
    middle = times[len(times) // 2]
    _, late = export(LEGACY_DB, "--since", middle)
    _, early = export(LEGACY_DB, "--until", middle)
    assert len(late) + len(early) == len(everything) and late and early


def test_state_exports_each_turn_once_and_only_new_ones(tmp_path):
    full = tmp_path / "full.sqlite"
    before = tmp_path / "before.sqlite"
    shutil.copy(LEGACY_DB, full)
    shutil.copy(LEGACY_DB, before)
    truth = manifest(LEGACY_DB)
    added = [r["run_id"] for r in truth["runs"][-3:]]
    with sqlite3.connect(before) as conn:
        for run_id in added:
            conn.execute("DELETE FROM span_table WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM run_table WHERE id = ?", (run_id,))
    state = tmp_path / "export.state"

    _, first = export(before, "--state", state)
    _, again = export(before, "--state", state)
    _, new = export(full, "--state", state)
    assert again == []
    assert {r["source"]["run_id"] for r in new} == set(added)
    assert len(new) == sum(len(r["turns"]) for r in truth["runs"] if r["run_id"] in added)
    assert len(first) + len(new) == sum(len(r["turns"]) for r in truth["runs"])


def test_state_holds_back_the_last_turn_of_a_run_in_progress(tmp_path):
    db = tmp_path / "live.sqlite"
    shutil.copy(LEGACY_DB, db)
    run = next(r for r in manifest(LEGACY_DB)["runs"] if len(r["turns"]) == 3)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE run_table SET status = 'running' WHERE id = ?", (run["run_id"],))
    state = tmp_path / "s.json"
    result, records = export(db, "--state", state, "--settle", "1e12")
    mine = [r for r in records if r["source"]["run_id"] == run["run_id"]]
    assert len(mine) == 2  # the last turn may still get feedback
    assert "1 in progress" in result.stderr
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE run_table SET status = 'done' WHERE id = ?", (run["run_id"],))
    _, later = export(db, "--state", state, "--settle", "1e12")
    assert [r["query"] for r in later] == [expected_query(run["turns"][-1])]


def test_database_is_never_written(tmp_path):
    db = tmp_path / "db.sqlite"
    shutil.copy(LEGACY_DB, db)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    export(db, "--state", tmp_path / "s", "--unit", "run")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.sqlite", "s"]


def test_studio_can_write_while_an_export_runs_and_the_export_is_one_snapshot(tmp_path):
    """Studio's database uses a rollback journal: a reader holding a transaction for the whole
    export would make Studio's writes fail. Between batches no lock is held; spans written
    after the export began wait for the next export."""
    from tracewheel_trace_export.run import export as export_records

    db = tmp_path / "live.sqlite"
    shutil.copy(LEGACY_DB, db)
    records = export_records(str(db))
    first = next(records)  # the export is under way
    studio = sqlite3.connect(db, timeout=0)  # Studio with no patience at all
    with studio:
        run_id = studio.execute("SELECT run_id FROM span_table ORDER BY run_id DESC").fetchone()[0]
        studio.execute("INSERT INTO span_table SELECT id || '-late', traceId, parentSpanId, "
                       "name, spanKind, attributes, startTime, endTime, latencyMs, status, "
                       "statusMessage, events, 'zzz-late-run' FROM span_table WHERE run_id = ?",
                       (run_id,))
    studio.close()
    rest = list(records)
    assert len(rest) + 1 == len(export(LEGACY_DB)[1])
    assert "zzz-late-run" not in {r["source"]["run_id"] for r in [first, *rest]}
    _, later = export(db, "--run", "zzz-late-run")
    assert later  # the next export sees it


def test_clear_errors_for_files_that_are_not_studio_databases(tmp_path):
    result, _ = export(tmp_path / "missing.sqlite", ok=False)
    assert result.exit_code == 2 and "missing.sqlite' does not exist" in result.output
    text = tmp_path / "notes.txt"
    text.write_text("hello " * 200)
    result, _ = export(text, ok=False)
    assert result.exit_code == 1 and "not an SQLite database" in result.output
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id)")
        conn.execute("CREATE TABLE orders (id)")
    result, _ = export(other, ok=False)
    assert result.exit_code == 1
    assert "not an AgentScope Studio database" in result.output
    assert "tables found: customers, orders" in result.output


def test_locked_database_is_reported_after_the_timeout(tmp_path):
    db = tmp_path / "db.sqlite"
    shutil.copy(LEGACY_DB, db)
    holder = sqlite3.connect(db)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result, _ = export(db, "--timeout", "0.2", ok=False)
    finally:
        holder.rollback()
        holder.close()
    assert result.exit_code == 1
    assert "database is locked" in result.output and "--timeout" in result.output


def test_corrupt_attributes_are_counted_with_the_span_id_and_the_rest_goes_on(tmp_path):
    db = tmp_path / "db.sqlite"
    shutil.copy(LEGACY_DB, db)
    with sqlite3.connect(db) as conn:
        span_id = conn.execute(
            "SELECT id FROM span_table WHERE spanKind = 'TOOL' LIMIT 1").fetchone()[0]
        conn.execute("UPDATE span_table SET attributes = '{\"input\": [' WHERE id = ?",
                     (span_id,))
    result, records = export(db)
    _, clean = export(LEGACY_DB)
    assert len(records) == len(clean)
    assert f"span {span_id}: attributes is not valid JSON" in result.stderr
    assert "1 corrupt spans" in result.stderr


@pytest.mark.parametrize("attributes, problem", [
    ("[]", "attributes is a JSON list, not an object"),
    ("null", "attributes is null, not an object"),
])
def test_attributes_that_are_json_but_not_an_object_are_corrupt_spans(tmp_path, attributes,
                                                                       problem):
    db = tmp_path / "db.sqlite"
    shutil.copy(LEGACY_DB, db)
    with sqlite3.connect(db) as conn:
        span_id = conn.execute(
            "SELECT id FROM span_table WHERE spanKind = 'LLM' LIMIT 1").fetchone()[0]
        conn.execute("UPDATE span_table SET attributes = ? WHERE id = ?", (attributes, span_id))
    result, records = export(db)
    assert len(records) == len(export(LEGACY_DB)[1])
    assert f"span {span_id}: {problem}" in result.stderr and "1 corrupt spans" in result.stderr


@pytest.mark.parametrize("where, shape, problem", [
    ("invoke_agent", {"gen_ai.output": []}, "attributes.gen_ai.output is a JSON list, not an "
                                            "object"),
    ("chat", {"": {"input": [1, 2], "output": 5}}, "attributes.input is a JSON list, not an "
                                                    "object"),
    ("chat", {"gen_ai.input.messages": [{"role": "user", "parts": "hi"}]},
     "attributes.gen_ai.input.messages[].parts is not a list of objects"),
], ids=["agent-output-a-list", "input-a-list", "parts-a-string"])
def test_a_span_of_an_unexpected_shape_is_a_corrupt_span_and_its_run_goes_on(
        tmp_path, where, shape, problem):
    """A span whose attributes are JSON of a shape no Studio writes (a list where an object
    belongs): that span is counted as corrupt and named, the rest of its run is exported,
    and no internal exception text reaches the message (the whole run was skipped, with
    "AttributeError: 'list' object has no attribute 'get'", before)."""
    db = tmp_path / "db.sqlite"
    shutil.copy(OTEL_DB, db)
    with sqlite3.connect(db) as conn:
        # a run with more than one turn, so that the rest of it has something to export
        span_id, run_id, attrs = conn.execute(
            "SELECT id, conversationId, attributes FROM span_table s "
            "WHERE operationName = ? AND (SELECT COUNT(*) FROM span_table t WHERE "
            "t.conversationId = s.conversationId AND t.operationName = 'invoke_agent') > 1 "
            "LIMIT 1", (where,)).fetchone()
        attrs = json.loads(attrs)
        for path, value in shape.items():
            if not path:
                attrs = value
                continue
            *parents, key = path.split(".")
            node = attrs
            for part in parents:
                node = node.setdefault(part, {})
            node[key] = value
        conn.execute("UPDATE span_table SET attributes = ? WHERE id = ?",
                     (json.dumps(attrs), span_id))
    result, records = export(db)
    _, clean = export(OTEL_DB)
    assert f"span {span_id}: {problem}; skipped" in result.stderr
    assert "1 corrupt spans" in result.stderr and "unreadable runs" not in result.stderr
    assert "Error" not in result.stderr and "has no attribute" not in result.stderr
    mine = [r for r in records if r["source"]["run_id"] == run_id]
    assert mine, "the rest of the run is exported"
    others = {r["id"] for r in records if r["source"]["run_id"] != run_id}
    assert others == {r["id"] for r in clean if r["source"]["run_id"] != run_id}


def test_output_file_is_written_atomically(tmp_path):
    out = tmp_path / "tasks.jsonl"
    result, _ = export(LEGACY_DB, "-o", out)
    assert len(out.read_text().splitlines()) == 57
    assert "57 written" in result.stderr


def test_piped_into_head_exits_quietly():
    exe = Path(sys.executable).parent / "trace-export"
    proc = subprocess.run(f"'{exe}' '{LEGACY_DB}' | head -1", shell=True, capture_output=True,
                          text=True, timeout=120, executable="/bin/bash")
    assert json.loads(proc.stdout)["source"]["kind"] == "studio"
    assert "Traceback" not in proc.stderr


# --- the repr parser ------------------------------------------------------------------------

def test_repr_parser_reads_quotes_apostrophes_brackets_cjk_and_emoji():
    text = ("Msg(id='a', name='user', content=\"It's 'quoted' [x] {y} (z) — りんご 🍎\\n\", "
            "role='user', metadata=None, timestamp='t', invocation_id='None')")
    msg = parse_msg(text)
    assert msg["content"] == "It's 'quoted' [x] {y} (z) — りんご 🍎\n"
    assert msg["role"] == "user" and msg["metadata"] is None


def test_repr_parser_reads_multi_block_content():
    text = ("Msg(id='a', name='A', role='assistant', content=[{'type': 'thinking', 'thinking': "
            "'hmm'}, {'type': 'text', 'text': 'x'}, {'type': 'tool_use', 'id': 'c', 'name': 't', "
            "'input': {'n': -1, 'f': 1.5, 'ok': True, 'l': [1, (2, 3)]}}])")
    blocks = parse_msg(text)["content"]
    assert [b["type"] for b in blocks] == ["thinking", "text", "tool_use"]
    assert blocks[2]["input"] == {"n": -1, "f": 1.5, "ok": True, "l": [1, [2, 3]]}


@pytest.mark.parametrize("hostile", [
    "__import__('os').system('touch /tmp/pwned')",
    "Msg(content=open('/etc/passwd').read())",
    "Msg(**{'a': 1})",
    "[x for x in range(10)]",
    "Msg(id='a', content=" + "[" * 5000 + "]" * 5000 + ")",
])
def test_repr_parser_never_evaluates(hostile):
    with pytest.raises(ReprError):
        parse_repr(hostile)


def test_seed_config_names_the_database_and_the_output(tmp_path):
    out = tmp_path / "tasks.jsonl"
    config = tmp_path / "seed.yaml"
    config.write_text(
        "astuner:\n  task_reader:\n    type: tracing\n    feedback_tracing:\n"
        f"      base_url: {LEGACY_DB}\n      train_output_path: {out}\n")
    result = CliRunner().invoke(trace_export, ["--config", str(config)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 57


def test_references_fill_in_by_id_then_by_unambiguous_query(tmp_path):
    _, records = export(LEGACY_DB)
    first, second = records[0], records[1]
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"id": first["id"], "reference": "72"}) + "\n" +
                    json.dumps({"query": second["query"], "reference": 10}) + "\n" +
                    json.dumps({"query": "Please try again.", "reference": "150"}) + "\n" +
                    json.dumps({"query": "Please try again.", "reference": "151"}) + "\n")
    result, filled = export(LEGACY_DB, "--references", refs)
    assert filled[0]["reference"] == "72" and filled[1]["reference"] == "10"
    assert all(r["reference"] is None for r in filled if r["query"] == "Please try again.")
    assert "2 with a reference" in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"reference": "1"}\n')
    result, _ = export(LEGACY_DB, "--references", bad, ok=False)
    assert result.exit_code == 1 and f"{bad}:1: a reference record needs an `id` or a" \
        in result.output
    # the line, counting blank lines, not the record; and no hint to use --skip-invalid,
    # which skips the database's bad tasks, not this file's lines
    bad.write_text('{"id": "a", "reference": "1"}\n\n{"id": "b"}\n')
    result, _ = export(LEGACY_DB, "--references", bad, ok=False)
    assert result.exit_code == 1 and f"{bad}:3: a reference record needs a `reference`" \
        in result.output
    assert "--skip-invalid" not in result.output
    bad.write_text('{"id": "a", "reference": "1"}\n{"id": "b", "refer\n')
    result, _ = export(LEGACY_DB, "--references", bad, ok=False)
    assert f"{bad}:2: invalid JSON" in result.output and "--skip-invalid" not in result.output


def test_a_turn_whose_input_cannot_be_read_is_counted_and_named_not_exported(tmp_path):
    db = tmp_path / "hostile.sqlite"
    shutil.copy(LEGACY_DB, db)
    hostile = ("Msg(id='x', name=__import__('os').system('touch " + str(tmp_path / "pwned")
               + "'), content='hi', role='user')")
    with sqlite3.connect(db) as conn:
        span_id, run_id, attrs = conn.execute(
            "SELECT id, run_id, attributes FROM span_table WHERE name LIKE '%.reply' "
            "ORDER BY startTime LIMIT 1").fetchone()
        data = json.loads(attrs)
        data["input"]["kwargs"]["msg"] = hostile
        conn.execute("UPDATE span_table SET attributes = ? WHERE id = ?",
                     (json.dumps(data), span_id))
    _, before = export(LEGACY_DB)
    result, records = export(db)
    assert len(records) == len(before) - 1
    assert span_id not in {r["source"]["span_id"] for r in records}
    assert all(r["query"] for r in records)  # never an empty task in its place
    assert f"run {run_id}, span {span_id}: the agent's input is not a message we can read" \
        in result.stderr
    assert "1 unreadable turns" in result.stderr
    assert not (tmp_path / "pwned").exists()


def test_a_database_without_a_run_index_exports_the_same_and_is_left_alone(tmp_path):
    """Studio 1.0.5 has no index on span_table.run_id: the export indexes a temporary copy of
    (run, rowid) outside the user's folder. The same database with an index on a copy (this
    test's own) gives the same records."""
    plain_dir, indexed_dir = tmp_path / "plain", tmp_path / "indexed"
    plain_dir.mkdir(), indexed_dir.mkdir()
    plain, indexed = plain_dir / "studio.sqlite", indexed_dir / "studio.sqlite"
    shutil.copy(LEGACY_DB, plain)
    shutil.copy(LEGACY_DB, indexed)
    with sqlite3.connect(indexed) as conn:
        conn.execute("CREATE INDEX by_run ON span_table(run_id)")
    before = {p.name: p.stat().st_mtime_ns for p in plain_dir.iterdir()}
    _, from_plain = export(plain)
    _, from_indexed = export(indexed)
    assert from_plain == from_indexed and len(from_plain) > 50
    assert {p.name: p.stat().st_mtime_ns for p in plain_dir.iterdir()} == before


@pytest.mark.parametrize("db", [LEGACY_DB, FIXTURES / "studio-1.0.9_agentscope-1.0.21.sqlite"],
                         ids=["1.0.5", "1.0.9"])
def test_a_wal_database_is_read_and_its_folder_left_as_it_was(tmp_path, db):
    wal = tmp_path / "studio.sqlite"
    shutil.copy(db, wal)
    with sqlite3.connect(wal) as conn:
        assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["studio.sqlite"]
    before = wal.stat().st_mtime_ns
    _, records = export(wal)
    _, expected = export(db)
    assert [r["id"] for r in records] == [r["id"] for r in expected]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["studio.sqlite"]  # no -wal, -shm
    assert wal.stat().st_mtime_ns == before


def test_a_wal_database_in_use_is_read_through_its_wal(tmp_path):
    """Studio running: its connection holds -wal and -shm, and rows not yet checkpointed live
    only in the -wal. They are read, and the files stay Studio's."""
    db = tmp_path / "studio.sqlite"
    shutil.copy(LEGACY_DB, db)
    studio = sqlite3.connect(db)
    try:
        studio.execute("PRAGMA journal_mode = WAL")
        studio.execute("PRAGMA wal_autocheckpoint = 0")
        studio.execute("UPDATE run_table SET name = 'renamed-in-the-wal'")
        studio.commit()
        _, records = export(db)
        assert {r["source"]["run_name"] for r in records} == {"renamed-in-the-wal"}
        assert (tmp_path / "studio.sqlite-wal").exists()
    finally:
        studio.close()


def test_an_idle_wal_database_written_during_the_read_is_an_error(tmp_path):
    from tracewheel.errors import TracewheelError
    from tracewheel_trace_export.run import export as export_tasks

    db = tmp_path / "studio.sqlite"
    shutil.copy(LEGACY_DB, db)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
    records = export_tasks(str(db))
    next(records)
    os.utime(db, ns=(time.time_ns(), time.time_ns() + 10**9))  # as a checkpoint would
    with pytest.raises(TracewheelError, match="written while it was read"):
        list(records)


def test_sigterm_during_an_export_leaves_no_temporary_file(tmp_path):
    """A database large enough to take seconds (the benchmark's builder: fixture runs copied
    with fresh ids), exported with -o and stopped midway."""
    import signal

    bench = load_script("bench/bench_trace_export.py")
    fixture = FIXTURES / "studio-1.0.9_agentscope-1.0.21.sqlite"
    db = tmp_path / "big.sqlite"
    shutil.copy(fixture, db)
    bench.build_into(fixture, db, 4000)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    exe = str(Path(sys.executable).parent / "trace-export")
    proc = subprocess.Popen([exe, str(db), "-o", str(out_dir / "tasks.jsonl")],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out_dir.glob(".tasks.jsonl.*.tmp")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    time.sleep(0.3)  # well into the export
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Terminated." in stderr and "Traceback" not in stderr
    assert list(out_dir.iterdir()) == []


def test_sigkill_during_an_export_leaves_nothing_in_the_temporary_folder(tmp_path):
    """Studio 1.0.5's run index is SQLite's private temporary database: unlinked as soon as
    it is opened, so a killed export leaves no file behind (it grows with the database)."""
    import signal

    bench = load_script("bench/bench_trace_export.py")
    db = tmp_path / "big.sqlite"
    shutil.copy(LEGACY_DB, db)
    bench.build_into(LEGACY_DB, db, 4000)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "tasks.jsonl"
    exe = str(Path(sys.executable).parent / "trace-export")
    proc = subprocess.Popen([exe, str(db), "-o", str(out)], stderr=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(scratch),
                                 "SQLITE_TMPDIR": str(scratch)})
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".tasks.jsonl.*.tmp")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    time.sleep(0.5)  # well into the export, the index built
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert list(scratch.iterdir()) == []
