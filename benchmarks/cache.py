"""What the cache saves: wall seconds of whole `python -m pipeline` commands.

    python -m benchmarks.cache [--set KEY=VALUE ...] [--artifacts DIR]

In a fresh artifacts root: `--help` (Python's and our start-up floor), a first run,
the same run again (every component cached), and `run train` alone (always executes).
Each is its own process, as a user or cron would start it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import print_table, write_json

COLUMNS = ("command", "seconds", "executed", "cached")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache", description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/benchmarks/cache"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    shutil.rmtree(args.artifacts / "runs", ignore_errors=True)
    shutil.rmtree(args.artifacts / "serving", ignore_errors=True)
    settings = [a for o in args.overrides for a in ("--set", o)]
    rows = []
    for label, command in (
        ("--help", ["--help"]),
        ("run (first)", ["run", *settings]),
        ("run (again: all cached)", ["run", *settings]),
        ("run train (alone)", ["run", "train", *settings]),
    ):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "--artifacts", str(args.artifacts), *command],
                       check=True, capture_output=True)
        seconds = time.perf_counter() - started
        statuses = _last_run_statuses(args.artifacts) if command[0] == "run" else {}
        rows.append({"command": label, "seconds": round(seconds, 2),
                     "executed": " ".join(n for n, s in statuses.items() if s == "succeeded") or "-",
                     "cached": " ".join(n for n, s in statuses.items() if s == "cached") or "-"})
        print_table(rows[-1:], COLUMNS)
    print_table(rows, COLUMNS, title="cache")
    write_json(args.artifacts / "cache.json", "cache", overrides=args.overrides, rows=rows)
    return 0


def _last_run_statuses(artifacts: Path) -> dict:
    last = sorted((artifacts / "runs").iterdir())[-1]
    return {n: c["status"] for n, c in json.loads((last / "run.json").read_text())["components"].items()}


if __name__ == "__main__":
    raise SystemExit(main())
