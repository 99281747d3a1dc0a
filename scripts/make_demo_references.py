"""Build the demo's known-good answers (examples/demo-references.jsonl) from the manifest that
came with the demo Studio database: the ground truth written when the database was made.

    .venv/bin/python scripts/make_demo_references.py examples/demo.sqlite \
        > examples/demo-references.jsonl

Each exported turn is matched to its manifest turn (runs by id, turns in order); turns with an
expected answer get a line {"id": <task id>, "reference": <answer>, "query": <its text>}.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path


def main() -> int:
    db = Path(sys.argv[1])
    manifest = json.loads(Path(sys.argv[2] if len(sys.argv) > 2 else
                               db.with_suffix(".manifest.json")).read_text())
    exe = Path(sys.executable).parent / "trace-export"
    out = subprocess.run([str(exe), "-q", str(db)], capture_output=True, text=True, check=True)
    by_run = defaultdict(list)
    for line in out.stdout.splitlines():
        record = json.loads(line)
        by_run[record["source"]["run_id"]].append(record)
    for run in manifest["runs"]:
        records = by_run[run["run_id"]]
        if len(records) != len(run["turns"]):
            sys.exit(f"run {run['run_id']}: {len(records)} turns exported, "
                     f"{len(run['turns'])} in the manifest")
        for turn, record in zip(run["turns"], records, strict=True):
            if turn["expected_answer"] is not None:
                print(json.dumps({"id": record["id"], "reference": turn["expected_answer"],
                                  "query": record["query"]}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
