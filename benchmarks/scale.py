"""How preprocess and training scale with the data: 1x, 4x and 10x MNIST train.

    python -m benchmarks.scale [--sizes 1,4,10] [--runner-modes] [--repeats N] [--train-preset seed-000]

For each size, ingest-format TFRecords of that many MNIST train images (copy k of the
real images rolled by a few pixels derived from k, so every copy is distinct; fractions
such as 0.05 take the first images) plus the MNIST test split (the same fraction of it
below 1x), written once under
artifacts/benchmarks/scale/data/. Then, each in its own process:
  beam   the preprocess component (Beam, the default in-memory runner; with --runner-modes
         also DirectRunner's multi_threading and multi_processing with 2 workers);
  numpy  one plain process doing the same work with preprocess's own functions (decode,
         split by hash, `scale_pixels`, serialize, statistics) and writing the same TFRecords;
  train  one epoch of `components.train.train` on the Beam output.
Reported: wall seconds of the work (imports excluded), images per second, peak memory
(RSS of the process and all its children, sampled every 0.1 s); then the ratios largest/
smallest size for time and memory, and Beam/NumPy at the largest size.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from benchmarks.report import machine, measured, print_table, write_json

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MNIST_TRAIN = 60_000
RUNNER_MODES = {
    "in_memory": [],
    "multi_threading": ["--direct_running_mode=multi_threading"],
    "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}
COLUMNS = ("size", "images", "way", "seconds", "images_per_s", "peak_rss_mb", "runs")
MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/benchmarks/scale"))
    parser.add_argument("--sizes", type=_sizes, default=[1.0, 4.0, 10.0],
                        help="multiples of MNIST train, comma-separated; fractions allowed (default 1,4,10)")
    parser.add_argument("--mirror", type=Path, default=Path(os.environ.get("MNIST_MIRROR", MIRROR)),
                        help="folder of the original MNIST .gz files (default ../shared/data/mnist)")
    parser.add_argument("--runner-modes", action="store_true",
                        help="also run Beam with DirectRunner's multi_threading and multi_processing (2 workers)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each preprocess way; the median is reported")
    parser.add_argument("--train-preset", default="seed-000", help="model trained for one epoch (default seed-000)")
    parser.add_argument("--child", nargs=3, metavar=("WAY", "SOURCE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        way, source, out = args.child
        print(json.dumps(_work(way, Path(source), Path(out), args.train_preset)))
        return 0

    print(f"machine: {machine()}")
    modes = list(RUNNER_MODES) if args.runner_modes else ["in_memory"]
    rows, work = [], args.artifacts / "work"
    for size in args.sizes:
        data = build_examples(args.mirror, args.artifacts / "data" / f"x{size:g}", size)
        ways = [f"beam:{mode}" for mode in modes] + ["numpy"]
        for way in ways:
            runs = [_measure(way, data, work / way.replace(":", "-"), args.train_preset) for _ in range(args.repeats)]
            rows.append(_row(size, way, runs))
            print_table(rows[-1:], COLUMNS)
        _check_same_work(rows[-len(ways):])
        # Train on the default runner's output, as the pipeline would.
        rows.append(_row(size, "train", [_measure("train", work / "beam-in_memory", work / "model", args.train_preset)]))
        print_table(rows[-1:], COLUMNS)
    shutil.rmtree(work, ignore_errors=True)

    print_table(rows, COLUMNS, title="scale")
    ratios = scale_ratios(rows, min(args.sizes), max(args.sizes))
    for name, value in ratios.items():
        print(f"{name}: {value}")
    write_json(args.artifacts / "scale.json", "scale", sizes=args.sizes, repeats=args.repeats,
               train_preset=args.train_preset, rows=rows, ratios=ratios)
    return 0


def _sizes(text: str) -> list[float]:
    try:
        sizes = [float(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes multiples of MNIST train such as 1,4,10 or 0.05,0.1; got {text!r}")
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"--sizes must be positive; got {text!r}")
    return sizes


def shifted_copies(images, size: float):
    """`size` x the images: copy k rolled by an offset of up to 2 pixels derived from k
    (copy 0 is the original), so no two copies hold the same image."""
    import numpy as np

    offsets = sorted(((dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)), key=lambda o: (abs(o[0]) + abs(o[1]), o))
    total = round(size * len(images))
    if total > len(offsets) * len(images):
        raise ValueError(f"--sizes {size:g} is more than {len(offsets)} distinct shifted copies of MNIST")
    for copy in range(-(-total // len(images))):
        dx, dy = offsets[copy]
        count = min(len(images), total - copy * len(images))
        yield np.roll(images[:count], (dy, dx), axis=(1, 2))


def build_examples(mirror: Path, folder: Path, size: float) -> Path:
    """Ingest's output format (see components/common/records.py) for `size` x MNIST train, written once."""
    import tensorflow as tf

    from components.common.records import serialize_example
    from components.ingest import EXAMPLES_PER_SHARD

    if (folder / "ingest.json").is_file():
        return folder
    scratch = folder.with_name(folder.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    train_images, train_labels = _read_idx(mirror, "train")
    test_images, test_labels = _read_idx(mirror, "t10k")
    counts = {"train": round(size * MNIST_TRAIN), "test": min(len(test_images), round(size * len(test_images)))}
    shards = -(-counts["train"] // EXAMPLES_PER_SHARD)
    writers = [tf.io.TFRecordWriter(str(scratch / f"train-{i:05d}-of-{shards:05d}.tfrecord")) for i in range(shards)]
    written = 0
    for copy in shifted_copies(train_images, size):
        for image, label in zip(copy, train_labels):
            writers[written // EXAMPLES_PER_SHARD].write(serialize_example(image.tobytes(), label))
            written += 1
    for writer in writers:
        writer.close()
    with tf.io.TFRecordWriter(str(scratch / "test-00000-of-00001.tfrecord")) as writer:
        for image, label in zip(test_images[:counts["test"]], test_labels):
            writer.write(serialize_example(image.tobytes(), label))
    splits = {name: {"tfds_split": f"{size:g}x MNIST {name} (benchmarks.scale)", "count": n} for name, n in counts.items()}
    (scratch / "ingest.json").write_text(json.dumps({"dataset": "mnist", "splits": splits,
                                                      "source": f"shifted copies of {mirror.resolve()}"}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    scratch.rename(folder)
    return folder


def _read_idx(mirror: Path, prefix: str):
    import numpy as np

    paths = [mirror / f"{prefix}-{kind}-idx{dims}-ubyte.gz" for kind, dims in (("images", 3), ("labels", 1))]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"MNIST file missing: {path}; pass --mirror (or MNIST_MIRROR) pointing at the original files")
    images = np.frombuffer(gzip.decompress(paths[0].read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.decompress(paths[1].read_bytes()), np.uint8, offset=8).astype(np.int64)
    return images, labels


def _measure(way: str, source: Path, out: Path, train_preset: str) -> dict:
    """Runs one way in a child process; its result, with the peak RSS of its process tree."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "benchmarks.scale", "--train-preset", train_preset,
               "--child", way, str(source), str(out)]
    result, _, peak = measured(command)
    if result.returncode:
        raise RuntimeError(f"{way} on {source} failed (exit {result.returncode}); run: {' '.join(command)}")
    return {**json.loads(result.stdout.splitlines()[-1]), "peak_rss_mb": round(peak / 2**20)}


def _work(way: str, source: Path, out: Path, train_preset: str) -> dict:
    """What a child process measures: seconds of the work itself, and how many images it took.

    Imports come first, outside the timing: TensorFlow and Beam take seconds to import,
    the same at every size, and would make the small sizes look slow.
    """
    if way.startswith("beam:"):
        from components.preprocess import preprocess

        def job():
            return preprocess(source, out, pipeline_options=RUNNER_MODES[way.split(":", 1)[1]])
    elif way == "numpy":
        import components.preprocess  # noqa: F401  (the functions the loop calls, and TensorFlow)

        def job():
            return preprocess_in_numpy(source, out)
    else:
        from components.train import train

        def job():
            train(source, out, preset=train_preset, epochs=1, stop="none")
            return {"train": json.loads((source / "statistics.json").read_text())["train"]}  # one epoch over train
    started = time.perf_counter()
    stats = job()
    images = sum(s["count"] for name, s in stats.items() if name in ("train", "validation", "test"))
    return {"seconds": time.perf_counter() - started, "images": images,
            "statistics": {name: {k: s[k] for k in ("count", "pixel_mean")} for name, s in stats.items()}}


def preprocess_in_numpy(examples: Path, transformed: Path, batch_size: int = 1024) -> dict:
    """The preprocess job without Beam: one process, preprocess's own functions, the same files."""
    import tensorflow as tf

    from components.common.records import serialize_scaled
    from components.preprocess import SplitStatistics, assign_split, decode_raw_example, scale_batch

    transformed.mkdir(parents=True, exist_ok=True)
    writers = {name: tf.io.TFRecordWriter(str(transformed / f"{name}-00000-of-00001.tfrecord"))
               for name in ("train", "validation")}
    combine = SplitStatistics()
    accumulators = {name: combine.create_accumulator() for name in ("train", "validation", "test")}

    def flush(name, batch):
        for example in scale_batch(batch):
            if name in writers:
                writers[name].write(serialize_scaled(example))
            combine.add_input(accumulators[name], example)
        batch.clear()

    for split in ("train", "test"):
        pending = {"train": [], "validation": [], "test": []}
        files = sorted(str(p) for p in examples.glob(f"{split}-*.tfrecord"))
        for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
            example = decode_raw_example(record)
            if example[3] is not None:  # invalid; the scale data has none
                continue
            name = split if split == "test" else ("train", "validation")[assign_split(example[0], 0.1)]
            pending[name].append(example)
            if len(pending[name]) == batch_size:
                flush(name, pending[name])
        for name, batch in pending.items():
            if batch:
                flush(name, batch)
    for writer in writers.values():
        writer.close()
    return {name: combine.extract_output(acc) for name, acc in accumulators.items()}


def _check_same_work(rows: list[dict]) -> None:
    # Timings compare like with like only if every way split and counted the same examples.
    reference = rows[0]
    for row in rows[1:]:
        counts = {n: s["count"] for n, s in row["statistics"].items()}
        expected = {n: s["count"] for n, s in reference["statistics"].items()}
        if counts != expected:
            raise RuntimeError(f"{row['way']} counted {counts}, {reference['way']} {expected} at {row['size']}")


def _row(size: float, way: str, runs: list[dict]) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs)
    return {"size": f"{size:g}x", "images": runs[0]["images"], "way": way, "seconds": round(seconds, 2),
            "images_per_s": round(runs[0]["images"] / seconds), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "runs": " ".join(f"{r['seconds']:.1f}" for r in runs), "statistics": runs[0]["statistics"]}


def scale_ratios(rows: list[dict], smallest: float, largest: float) -> dict:
    """Time and memory of the largest size over the smallest, per way; Beam over NumPy at the largest."""
    by = {(r["size"], r["way"]): r for r in rows}
    low, high = f"{smallest:g}x", f"{largest:g}x"
    ratios = {}
    for way in dict.fromkeys(r["way"] for r in rows):
        if (low, way) in by and low != high:
            ratios[f"{way} {high}/{low} seconds"] = round(by[high, way]["seconds"] / by[low, way]["seconds"], 2)
            ratios[f"{way} {high}/{low} peak memory"] = round(by[high, way]["peak_rss_mb"] / by[low, way]["peak_rss_mb"], 2)
    ratios[f"beam/numpy seconds at {high}"] = round(by[high, "beam:in_memory"]["seconds"] / by[high, "numpy"]["seconds"], 2)
    ratios[f"beam/numpy peak memory at {high}"] = round(
        by[high, "beam:in_memory"]["peak_rss_mb"] / by[high, "numpy"]["peak_rss_mb"], 2)
    return ratios


if __name__ == "__main__":
    raise SystemExit(main())
