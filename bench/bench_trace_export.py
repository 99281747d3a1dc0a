"""trace-export on a large Studio database, beside the floor of a plain SELECT + JSON parse.

Builds a database of about --runs runs by replicating the rows of a fixture database with fresh
ids (runs, traces, spans), then measures, each in its own process:

- floor: SELECT every span row and json.loads its attributes (what any export must at least do)
- trace-export: the real command, output to /dev/null

and prints turns/s, MB/s (of span rows read), the ratio to the floor, and peak memory.

With --scaling it does so at several sizes for both Studio schemas (1.0.5, whose span_table has
no index on run_id, and 1.0.9) and prints the time per run at each: cost must grow linearly
with the number of runs.

    .venv/bin/python bench/bench_trace_export.py [--runs 20000] [--fixture PATH] [--keep DIR]
    .venv/bin/python bench/bench_trace_export.py --scaling [--sizes 1250,2500,5000,10000]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "studio"
DEFAULT_FIXTURE = FIXTURES / "studio-1.0.9_agentscope-1.0.21.sqlite"

FLOOR = """
import json, sqlite3, sys
if sys.argv[2] == "orjson":
    import orjson as json
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
rows = 0
for row in conn.execute("SELECT * FROM span_table"):
    json.loads(row[{attr_index}])
    rows += 1
print(rows)
"""


def _suffix_expr(column: str, k: int) -> str:
    return f"CASE WHEN {column} IS NULL OR {column} = '' THEN {column} ELSE {column} || '-{k}' END"


def run_measured(cmd: list[str], repeat: int) -> tuple[float, float, str]:
    """Best seconds of ``repeat`` runs, peak RSS in MiB (GNU time), stdout of one command."""
    best, peak, out = float("inf"), 0.0, ""
    for _ in range(repeat):
        started = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            sys.exit(f"{cmd[0]} failed:\n{proc.stderr[-2000:]}")
        best = min(best, seconds)
        peak = max(peak, int(proc.stderr.strip().splitlines()[-1]) / 1024)
        out = proc.stdout
    return best, peak, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--keep", type=Path, help="build the database here and keep it")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--scaling", action="store_true",
                        help="time per run at --sizes, for both schemas")
    parser.add_argument("--sizes", default="1250,2500,5000,10000")
    args = parser.parse_args()
    if args.scaling:
        scaling([int(n) for n in args.sizes.split(",")], args.repeat)
        return

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench-trace-export-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "studio-large.sqlite"
    started = time.monotonic()
    if not db.exists():
        shutil.copy(args.fixture, db)
        build_into(args.fixture, db, args.runs)
    runs = _count_runs(db)
    size_mb = db.stat().st_size / 1e6
    print(f"database: {runs} runs, {size_mb:.0f} MB ({db}), built in "
          f"{time.monotonic() - started:.0f} s", flush=True)

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(span_table)")]
        span_mb = conn.execute(
            "SELECT sum(length(attributes)) FROM span_table").fetchone()[0] / 1e6
    floor = FLOOR.replace("{attr_index}", str(cols.index("attributes")))
    results = {}
    for parser_name in ("json", "orjson"):
        results[f"floor ({parser_name})"] = run_measured(
            [sys.executable, "-c", floor, str(db), parser_name], args.repeat)
    exe = str(Path(sys.executable).parent / "trace-export")
    results["trace-export"] = run_measured(
        ["sh", "-c", f"'{exe}' -q '{db}' | wc -l > '{workdir}/turns.txt'"], args.repeat)
    turns = int((workdir / "turns.txt").read_text())
    rows = int(results["floor (json)"][2])

    print(f"{'':18}{'seconds':>10}{'turns/s':>10}{'MB/s':>8}{'peak MiB':>10}")
    for name, (seconds, peak, _) in results.items():
        print(f"{name:18}{seconds:10.2f}{turns / seconds:10.0f}{span_mb / seconds:8.1f}"
              f"{peak:10.0f}")
    export_s = results["trace-export"][0]
    print(f"trace-export speed / floor: {results['floor (json)'][0] / export_s:.2f}x "
          f"(json floor), {results['floor (orjson)'][0] / export_s:.2f}x (orjson floor); "
          f"{rows} span rows, {span_mb:.0f} MB of attributes, {turns} turns")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


def scaling(sizes: list[int], repeat: int) -> None:
    """trace-export and the orjson floor at each size, for both schemas: seconds per 1,000
    runs should stay flat as the database grows."""
    exe = str(Path(sys.executable).parent / "trace-export")
    print(f"{'schema':8}{'runs':>8}{'MB':>7}{'export s':>10}{'ms/run':>8}{'floor s':>9}"
          f"{'export/floor':>13}{'peak MiB':>10}")
    for fixture in (FIXTURES / "studio-1.0.5_agentscope-1.0.7.sqlite", DEFAULT_FIXTURE):
        schema = fixture.name.split("_")[0].removeprefix("studio-")
        for size in sizes:
            workdir = Path(tempfile.mkdtemp(prefix="bench-trace-export-"))
            db = workdir / "studio.sqlite"
            shutil.copy(fixture, db)
            build_into(fixture, db, size)
            runs = _count_runs(db)
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                cols = [r[1] for r in conn.execute("PRAGMA table_info(span_table)")]
            floor = FLOOR.replace("{attr_index}", str(cols.index("attributes")))
            floor_s, _, _ = run_measured([sys.executable, "-c", floor, str(db), "orjson"],
                                         repeat)
            export_s, peak, _ = run_measured(["sh", "-c", f"'{exe}' -q '{db}' > /dev/null"],
                                             repeat)
            print(f"{schema:8}{runs:8}{db.stat().st_size / 1e6:7.0f}{export_s:10.2f}"
                  f"{1000 * export_s / runs:8.2f}{floor_s:9.2f}{export_s / floor_s:13.2f}"
                  f"{peak:10.0f}", flush=True)
            shutil.rmtree(workdir, ignore_errors=True)


def _count_runs(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(span_table)")}
        column = "run_id" if "run_id" in cols else "conversationId"
        return conn.execute(f"SELECT count(DISTINCT {column}) FROM span_table").fetchone()[0]


def build_into(fixture: Path, db: Path, runs: int) -> None:
    """Append copies of ``fixture``'s runs to ``db`` (a copy of it) with fresh ids."""
    conn = sqlite3.connect(db)
    conn.execute("ATTACH DATABASE ? AS base", (str(fixture),))
    span_cols = [r[1] for r in conn.execute("PRAGMA main.table_info(span_table)")]
    run_cols = [r[1] for r in conn.execute("PRAGMA main.table_info(run_table)")]
    id_cols = {"id", "traceId", "spanId", "parentSpanId", "run_id", "conversationId"}
    run_col = "run_id" if "run_id" in span_cols else "conversationId"
    base_runs = conn.execute(f"SELECT count(DISTINCT {run_col}) FROM base.span_table").fetchone()[0]
    copies = max(0, -(-runs // base_runs) - 1)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    for k in range(1, copies + 1):
        spans = ", ".join(_suffix_expr(c, k) if c in id_cols else c for c in span_cols)
        conn.execute(f"INSERT INTO main.span_table ({', '.join(span_cols)}) "
                     f"SELECT {spans} FROM base.span_table")
        cols = ", ".join(_suffix_expr(c, k) if c == "id" else c for c in run_cols)
        conn.execute(f"INSERT INTO main.run_table ({', '.join(run_cols)}) "
                     f"SELECT {cols} FROM base.run_table")
    conn.commit()
    conn.close()


if __name__ == "__main__":
    main()
