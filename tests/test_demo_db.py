"""The demo's production traffic (scripts/make_demo_db.py): a Studio 1.0.9 database made from a
real one, read back by trace-export with the counts the script wrote, in the workflow's own
prompt and tool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, load_script

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo.sqlite"
    made = subprocess.run([BIN / "python", ROOT / "scripts" / "make_demo_db.py", "--runs", "60",
                           "--out", out], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    manifest = json.loads(out.with_suffix(".manifest.json").read_text())
    refs = [json.loads(line) for line in
            out.with_name("demo-references.jsonl").read_text().splitlines()]
    exported = subprocess.run([BIN / "trace-export", "-q", out], capture_output=True, text=True,
                              check=True).stdout
    return out, manifest, refs, [json.loads(line) for line in exported.splitlines()]


def test_trace_export_reads_what_the_script_wrote(demo):
    _, manifest, refs, records = demo
    turns = [(run["run_id"], turn) for run in manifest["runs"] for turn in run["turns"]]
    assert len(manifest["runs"]) == 60 == len({r["source"]["run_id"] for r in records})
    assert len(records) == len(turns) == manifest["summary"]["turns"]
    by_run: dict[str, list[dict]] = {}
    for record in records:
        by_run.setdefault(record["source"]["run_id"], []).append(record)
    for run_id, turn in turns:
        record = by_run[run_id][turn["index"]]
        assert record["query"] == turn["input"]
        assert record["source"]["llm_calls"] == turn["llm_calls"]
        assert record["source"]["tool_calls"] == turn["tool_calls"]
    assert len(refs) == manifest["summary"]["with_reference"] > 0
    assert {r["id"] for r in refs} <= {r["id"] for r in records}
    # the mix a real deployment has: mostly right, some wrong, users sometimes mistaken
    summary = manifest["summary"]
    assert summary["right"] > summary["wrong"] > 0 and summary["user_feedback_mistaken"] > 0


def test_production_ran_the_agent_the_loop_trains(demo):
    """Every LLM call in the traces has the workflow's system prompt and tool, and every tool
    call printed what the demo agent's sandbox prints for that code."""
    from tracewheel.sandbox import run_python

    agent = load_script("examples/math_agent.py")
    tools = agent.make_toolkit().get_json_schemas()
    _, _, _, records = demo
    calls = [step for r in records for step in r["trajectory"] if step["type"] == "llm"]
    assert calls and all(c["messages"][0]["content"] == agent.SYS_PROMPT for c in calls)
    assert all(c["tools"] == tools for c in calls)
    runs = [step for r in records[:10] for step in r["trajectory"] if step["type"] == "tool"]
    for step in runs:
        assert run_python(step["arguments"]["code"], timeout=30).text() == step["result"]


def test_the_script_writes_the_same_files_every_time(demo, tmp_path):
    first, manifest, refs, _ = demo
    again = tmp_path / "demo.sqlite"
    subprocess.run([BIN / "python", ROOT / "scripts" / "make_demo_db.py", "--runs", "60",
                    "--out", again], capture_output=True, check=True, timeout=300)
    assert json.loads(again.with_suffix(".manifest.json").read_text()) == manifest
    assert (again.with_name("demo-references.jsonl").read_text()
            == first.with_name("demo-references.jsonl").read_text())
