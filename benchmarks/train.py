"""Training speed on full MNIST: the train component against `model.fit` on NumPy arrays.

    python -m benchmarks.train [--presets best ...] [--epochs N] [--set KEY=VALUE ...]

Ingest and preprocess run once through the pipeline. Each preset then trains through
the train component, as `python -m pipeline run train` does, and the same network
trains again the way the seed notebooks do: `model.fit(x, y)` on NumPy arrays, with
the same epochs, batch size and validation split. Each way trains in its own process: the
component with the thread pools the runner sets for its preset, the notebook way with
TensorFlow's defaults. Printed per epoch and overall: wall
seconds, CPU-busy share (process CPU seconds / wall seconds / cores) and training
images per second; then the component's speed relative to the notebook way.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import time
from pathlib import Path

from benchmarks.report import in_fresh_process, machine, print_table, write_json

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EPOCH_COLUMNS = ("epoch", "seconds", "cpu_busy", "images_per_s")
SUMMARY_COLUMNS = ("preset", "way", "epochs", "seconds", "cpu_busy", "images_per_s", "slowest_vs_median",
                   "val_accuracy")


def main(argv: list[str] | None = None) -> int:
    from components.training.presets import PRESETS
    from pipeline.config import load_config
    from pipeline.runner import configure_logging, run

    parser = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/benchmarks/train"))
    parser.add_argument("--presets", nargs="+", default=["best"], choices=list(PRESETS))
    parser.add_argument("--epochs", type=int, help="epochs for both ways (default: each preset's own)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    configure_logging()
    print(f"machine: {machine()}")

    run_dir = run(load_config(args.overrides), args.artifacts, ["ingest", "preprocess"])
    transformed = run_dir / "preprocess"
    summary, details = [], {}
    for preset in args.presets:
        # Never stop early: both ways must run the same number of epochs to be compared.
        settings = [f"train.preset={preset}", "train.stop=none"] + ([f"train.epochs={args.epochs}"] if args.epochs else [])
        cfg = load_config([*args.overrides, *settings])
        training = json.loads((in_fresh_process(run, cfg, args.artifacts, ["train"]) / "train" / "training.json").read_text())
        component = _figures(training["epoch_timings"], training["train_seconds"], training["train_cpu_seconds"],
                             training["train_examples"])
        component.update(val_accuracy=training["final_metrics"]["val_accuracy"])
        notebook = in_fresh_process(_train_like_a_notebook, transformed, cfg)  # TensorFlow's own thread pools
        for way, figures in (("component", component), ("model.fit(numpy)", notebook)):
            print_table(figures["per_epoch"], EPOCH_COLUMNS, title=f"{preset}: {way}, per epoch")
            summary.append({"preset": preset, "way": way, **{k: v for k, v in figures.items() if k != "per_epoch"}})
        ratio = component["images_per_s"] / notebook["images_per_s"]
        details[preset] = {"component": component, "model_fit_numpy": notebook, "speed_ratio": round(ratio, 3)}
        print_table(summary, SUMMARY_COLUMNS, title="overall")
        print(f"{preset}: the train component trains {ratio:.2f}x as many images/s as model.fit on NumPy arrays")

    write_json(args.artifacts / "train.json", "train", overrides=args.overrides, epochs=args.epochs,
               summary=summary, presets=details)
    return 0


def _figures(timings: list[dict], seconds: float, cpu_seconds: float, examples: int) -> dict:
    cores = machine()["cores"]
    per_epoch = [{"epoch": t["epoch"], "seconds": t["seconds"], "cpu_busy": round(t["cpu_seconds"] / t["seconds"] / cores, 3),
               "images_per_s": round(examples / t["seconds"])} for t in timings]
    median = statistics.median(t["seconds"] for t in timings)
    return {
        "epochs": len(timings), "per_epoch": per_epoch, "seconds": round(seconds, 1), "cpu_busy": round(cpu_seconds / seconds / cores, 3),
        "images_per_s": round(examples * len(timings) / seconds),
        "slowest_vs_median": round(max(t["seconds"] for t in timings) / median, 3),
    }


def _train_like_a_notebook(transformed: Path, cfg) -> dict:
    """The seed notebooks' way: the whole split as NumPy arrays straight into `model.fit`."""
    import keras

    from components.training.callbacks import EpochLog
    from components.training.models import compiled_model
    from components.training.presets import Preset, resolve_settings
    from components.training.training_data import read_split, split_size

    preset_fields = {f.name for f in dataclasses.fields(Preset)}
    settings = resolve_settings(cfg.train.preset, **cfg.train.model_dump(include=preset_fields))

    def arrays(split):  # the whole split at once, as a notebook holds it
        count = split_size(transformed, split)
        batch = next(iter(read_split(transformed, split, count, one_hot=settings.one_hot_labels)[0]))
        return tuple(t.numpy() for t in batch)

    x, y = arrays("train")
    validation = arrays("validation")
    keras.utils.set_random_seed(cfg.seed)
    _, trainer = compiled_model(settings, math.ceil(len(x) / settings.batch_size))
    timer = EpochLog()
    started, cpu_started = time.perf_counter(), time.process_time()
    history = trainer.fit(x, y, batch_size=settings.batch_size, epochs=settings.epochs, validation_data=validation,
                      callbacks=[timer], verbose=0)
    figures = _figures(timer.timings, time.perf_counter() - started, time.process_time() - cpu_started, len(x))
    figures.update(val_accuracy=float(history.history["val_accuracy"][-1]))
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
