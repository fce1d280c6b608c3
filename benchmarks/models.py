"""Train every preset on full MNIST through the real pipeline; print a table, write JSON.

    python -m benchmarks.models [--presets best seed-000 ...] [--set KEY=VALUE ...]

Ingest and preprocess run once; then train and evaluate run once per preset, each
as its own pipeline run, so every number comes from the artifacts a user would get.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from benchmarks.report import print_table, write_json

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

COLUMNS = ("preset", "epochs_run", "stop_reason", "train_seconds", "test_accuracy", "test_loss")


def main(argv: list[str] | None = None) -> int:
    from components.presets import PRESETS
    from pipeline.config import load_config
    from pipeline.runner import configure_logging, run

    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/benchmarks/models"))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    configure_logging()

    # Its own artifacts root has no served model, so evaluate compares against none.
    run(load_config(args.overrides), args.artifacts, ["ingest", "preprocess"])
    rows = []
    for preset in args.presets:
        run_dir = run(load_config([*args.overrides, f"train.preset={preset}"]), args.artifacts, ["train", "evaluate"])
        training = json.loads((run_dir / "train" / "training.json").read_text())
        metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
        rows.append({
            "preset": preset, "epochs_run": training["epochs_run"], "stop_reason": training["stop_reason"],
            "train_seconds": training["train_seconds"], "test_accuracy": metrics["accuracy"],
            "test_loss": round(metrics["loss"], 4), "run": run_dir.name,
        })
        print_table(rows, COLUMNS)

    write_json(args.artifacts / "models.json", "models", overrides=args.overrides, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
