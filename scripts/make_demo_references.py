"""Known-good answers of a Studio database from the manifest that came with it: the ground
truth written when the database was made (the real fixtures in tests/fixtures/studio/, and the
demo database, whose references scripts/make_demo_db.py writes with `graded_turns`).

    .venv/bin/python scripts/make_demo_references.py tests/fixtures/studio/DB.sqlite > refs.jsonl

Each exported turn is matched to its manifest turn (runs by id, turns in order); turns with an
expected answer get a line {"id": <task id>, "reference": <answer>, "query": <its text>}.
`graded_turns` gives the pairs themselves, for tests and benchmarks that grade a filter
against the manifest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path


def graded_turns(db: Path, manifest: Path | None = None) -> list[tuple[dict, dict]]:
    """Every task trace-export writes for ``db``, with its manifest turn, in export order."""
    truth = json.loads((manifest or db.with_suffix(".manifest.json")).read_text())
    exe = Path(sys.executable).parent / "trace-export"
    out = subprocess.run([str(exe), "-q", str(db)], capture_output=True, text=True, check=True)
    by_run = defaultdict(list)
    for line in out.stdout.splitlines():
        record = json.loads(line)
        by_run[record["source"]["run_id"]].append(record)
    pairs = []
    for run in truth["runs"]:
        records = by_run[run["run_id"]]
        if len(records) != len(run["turns"]):
            sys.exit(f"run {run['run_id']}: {len(records)} turns exported, "
                     f"{len(run['turns'])} in the manifest")
        pairs.extend(zip(records, run["turns"], strict=True))
    return pairs


def main() -> int:
    db = Path(sys.argv[1])
    manifest = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    for record, turn in graded_turns(db, manifest):
        if turn["expected_answer"] is not None:
            print(json.dumps({"id": record["id"], "reference": turn["expected_answer"],
                              "query": record["query"]}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
