"""Train presets on full MNIST through the real pipeline; print a table, write JSON.

    python -m benchmarks.models [--presets best seed-000 ...] [--seeds 1 2 3] [--set KEY=VALUE ...]

Ingest and preprocess run once per artifacts root (later benchmarks there reuse them); train
and evaluate run once per preset and seed, each as its own pipeline run in its own process,
so every number comes from the artifacts a user would get, trained as `make pipeline` would.
With several seeds, a second table gives each preset's mean and minimum test accuracy:
seeds of one network spread over a tenth of a point or more, as much as most changes buy.
It also gives the accuracy of the seeds' models averaged (their probabilities, image by
image): what an ensemble of them scores, at the sum of their training times.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from benchmarks.report import in_fresh_process, print_table, write_json

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

COLUMNS = ("preset", "seed", "epochs_run", "stop_reason", "train_seconds", "cpu_busy", "test_accuracy", "test_loss")
SUMMARY_COLUMNS = ("preset", "seeds", "mean_accuracy", "min_accuracy", "max_accuracy", "averaged_accuracy",
                   "mean_train_seconds")


def main(argv: list[str] | None = None) -> int:
    from components.training.presets import PRESETS
    from pipeline.config import load_config
    from pipeline.runner import configure_logging, run

    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/benchmarks/models"))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="train each preset once per seed (default: the configured seed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    configure_logging()

    # Its own artifacts root has no served model, so evaluate compares against none. Ingest and
    # preprocess come from the root's cache when they match: benchmarks run in one root then train
    # on the same records in the same shards, so the same seed draws the same batches in each.
    base = load_config(args.overrides)
    run(base, args.artifacts, ["ingest", "preprocess"], execute_named=False)
    seeds = args.seeds or [base.seed]
    rows, run_dirs = [], {}
    for preset in args.presets:
        for seed in seeds:
            config = load_config([*args.overrides, f"train.preset={preset}", f"seed={seed}"])
            run_dirs.setdefault(preset, []).append(in_fresh_process(run, config, args.artifacts, ["train", "evaluate"]))
            rows.append(_row(preset, seed, run_dirs[preset][-1]))
            print_table(rows, COLUMNS)
    summary = [_summary(p, [r for r in rows if r["preset"] == p], run_dirs[p]) for p in args.presets]
    if len(seeds) > 1:
        print_table(summary, SUMMARY_COLUMNS, "over seeds " + " ".join(map(str, seeds)))

    write_json(args.artifacts / "models.json", "models", overrides=args.overrides, seeds=seeds, rows=rows,
               summary=summary)
    return 0


def _row(preset: str, seed: int, run_dir: Path) -> dict:
    """One run's figures, from its train and evaluate manifests (the record of each result)."""
    from pipeline.store import MANIFEST, read_manifest

    training = read_manifest(run_dir / "train" / MANIFEST)["result"]
    metrics = read_manifest(run_dir / "evaluate" / MANIFEST)["result"]["candidate"]
    return {
        "preset": preset, "seed": seed, "epochs_run": training["epochs_run"], "stop_reason": training["stop_reason"],
        "train_seconds": training["train_seconds"],
        "cpu_busy": round(training["train_cpu_seconds"] / training["train_seconds"] / len(os.sched_getaffinity(0)), 3),
        "test_accuracy": metrics["accuracy"], "test_loss": round(metrics["loss"], 4), "run": run_dir.name,
    }


def _summary(preset: str, rows: list[dict], run_dirs: list[Path]) -> dict:
    accuracies = [r["test_accuracy"] for r in rows]
    return {
        "preset": preset, "seeds": len(rows), "mean_accuracy": round(statistics.mean(accuracies), 5),
        "min_accuracy": min(accuracies), "max_accuracy": max(accuracies),
        "averaged_accuracy": averaged_accuracy(run_dirs) if len(run_dirs) > 1 else None,
        "mean_train_seconds": round(statistics.mean(r["train_seconds"] for r in rows), 1),
    }


def averaged_accuracy(run_dirs: list[Path]) -> float:
    """Test accuracy of the runs' models with their probabilities averaged image by image, each
    model and the test split read where each run's evaluate manifest says it read them."""
    import numpy as np

    from components.common.records import iter_examples
    from components.common.transform import scale_pixels
    from components.evaluate import BATCH_SIZE
    from components.training import models
    from pipeline.store import MANIFEST, read_manifest

    inputs = [read_manifest(d / "evaluate" / MANIFEST)["inputs"] for d in run_dirs]
    if len({i["examples"] for i in inputs}) > 1:
        raise ValueError("the runs were evaluated on different test splits; average runs of one artifacts root")
    nets = [models.load(i["model"]) for i in inputs]
    right = total = 0
    for images, labels in iter_examples(Path(inputs[0]["examples"]), "test", BATCH_SIZE):
        x = scale_pixels(images)
        right += int((np.mean([net.predict_on_batch(x) for net in nets], axis=0).argmax(axis=1) == labels).sum())
        total += len(labels)
    return right / total


if __name__ == "__main__":
    raise SystemExit(main())
