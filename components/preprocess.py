"""Preprocess: an Apache Beam pipeline from raw examples to model-ready TFRecords.

Reads the ingest output, scales pixels with `transform.scale_pixels` (the function the
serving graph also uses), splits train into train/validation by a hash of each raw
example's content (stable across runs and runners), and writes:
  `train-*.tfrecord`, `validation-*.tfrecord`: `image` float32 28x28x1 in [0, 1], `label` int64;
  `statistics.json`: per split (train, validation, test) the count, the per-class
  histogram, the pixel mean/std/min/max and a pixel-intensity histogram, and per raw
  split (train, test) the invalid examples by kind, all computed in Beam. Invalid
  examples (an image that is not 28x28 uint8, a label outside 0..9) are counted and left
  out of the output; `validate` decides whether the run may go on.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from components.common.records import SCALED_FEATURES, parse_example, serialize_scaled
from components.common.transform import NUM_CLASSES, scale_pixels

HASH_BUCKETS = 10_000
_progress = None  # the terminal's bar while an in-process runner runs the job; None in workers
PIXEL_BINS = 20  # of the scaled [0, 1] range, for the drift and skew checks


def preprocess(
    examples: str | Path,
    transformed: str | Path,
    *,
    validation_fraction: float = 0.1,
    runner: str = "FnApiRunner",
    pipeline_options: list[str] | tuple[str, ...] = (),
    num_shards: int = 0,
) -> dict:
    """Run the Beam pipeline; return the statistics it wrote.

    `num_shards` fixes the TFRecord files per split; 0 lets the runner write one per bundle.
    A fixed count costs a shuffle of every record into its shard (a GroupByKey), which the
    in-process runner holds in memory: peak memory then grows with the data.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    # Absolute: a runner's workers do not share the launching process's working directory.
    # Paths go through Beam's FileSystems, so gs:// folders work too (Dataflow's workers see no local disk).
    examples, transformed = absolute(examples), absolute(transformed)
    for split in ("train", "test"):
        if not FileSystems.match([FileSystems.join(examples, f"{split}-*.tfrecord")])[0].metadata_list:
            raise FileNotFoundError(f"no {split} examples in {examples}; run ingest first")
    if "://" not in transformed:
        Path(transformed).mkdir(parents=True, exist_ok=True)
    options = PipelineOptions([f"--runner={runner}", *pipeline_options])

    global _progress
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        ingest_record = Path(examples, "ingest.json")
        total = sum(s.get("count", 0) for s in json.loads(ingest_record.read_text())["splits"].values()) \
            if ingest_record.is_file() else None
        _progress = tqdm(total=total, desc="preprocess (Beam)", unit="image", leave=False, file=sys.stderr)
    try:
        _run_job(options, examples, transformed, validation_fraction, num_shards)
    finally:
        if _progress is not None:
            _progress.close()
            _progress = None
    with FileSystems.open(FileSystems.join(transformed, "statistics.json")) as written:
        return json.loads(written.read())


def absolute(path: str | Path) -> str:
    """A local path made absolute; a URL such as gs://bucket/folder as it is."""
    return str(path) if "://" in str(path) else str(Path(path).resolve())


def _tick(example):
    if _progress is not None:
        _progress.update(1)
    return example


def _run_job(options: PipelineOptions, examples: str, transformed: str, validation_fraction: float,
             num_shards: int) -> None:
    with beam.Pipeline(options=options) as p:
        invalid = []

        def read(split):
            valid, bad = (
                p
                | f"Read{split}" >> beam.io.ReadFromTFRecord(FileSystems.join(examples, f"{split}-*.tfrecord"))
                | f"Decode{split}" >> beam.Map(decode_raw_example)
                | f"Progress{split}" >> beam.Map(_tick)
                | f"Check{split}" >> beam.Partition(lambda example, _n: int(example[3] is not None), 2)
            )
            invalid.append(
                bad
                | f"Problem{split}" >> beam.Map(lambda example: example[3])
                | f"CountProblems{split}" >> beam.combiners.Count.PerElement()
                | f"Problems{split}" >> beam.combiners.ToDict()
                | f"KeyProblems{split}" >> beam.Map(lambda counts, split=split: (f"invalid/{split}", counts))
            )
            return valid

        train, validation = read("train") | "SplitByHash" >> beam.Partition(
            lambda example, _n: assign_split(example[0], validation_fraction), 2
        )
        splits = {"train": train, "validation": validation, "test": read("test")}

        statistics = []
        for name, pcoll in splits.items():
            scaled = (
                pcoll
                | f"Batch{name}" >> beam.BatchElements(min_batch_size=64, max_batch_size=1024)
                | f"Scale{name}" >> beam.FlatMap(scale_batch)
            )
            if name != "test":  # evaluate reads raw test examples, as serving would see them
                (
                    scaled
                    | f"Serialize{name}" >> beam.Map(serialize_scaled)
                    | f"Write{name}" >> beam.io.WriteToTFRecord(
                        FileSystems.join(transformed, name), file_name_suffix=".tfrecord", num_shards=num_shards
                    )
                )
            statistics.append(
                scaled | f"Stats{name}" >> beam.CombineGlobally(SplitStatistics()) | f"Key{name}" >> beam.Map(
                    lambda stats, name=name: (name, stats)
                )
            )
        (
            [*statistics, *invalid]
            | "AllStats" >> beam.Flatten()
            | "OneDict" >> beam.combiners.ToDict()
            | "ToJson" >> beam.Map(lambda d: json.dumps(with_invalid_counts(d), indent=2))
            | "WriteStats" >> beam.io.WriteToText(
                FileSystems.join(transformed, "statistics"), file_name_suffix=".json", num_shards=1, shard_name_template=""
            )
        )


def decode_raw_example(record: bytes) -> tuple[bytes, np.ndarray | None, int | None, str | None]:
    """Raw ingest record -> (content key, uint8 image, label, problem): problem is None, or
    `shape` (not 28x28 uint8 pixels) or `label` (outside 0..9).

    The key is the pixels and the label, not the record: protobuf does not fix the order
    in which a tf.train.Example's feature map is serialized (it follows the process's hash
    seed), so two ingest runs of the same data can write different bytes."""
    try:
        image, label = parse_example(record)
    except (IndexError, KeyError, ValueError):  # a feature missing or of the wrong type
        return record, None, None, "shape"
    if image.size != int(np.prod(SCALED_FEATURES["image"].shape)):
        return record, None, None, "shape"
    if not 0 <= label < NUM_CLASSES:
        return record, None, None, "label"
    return image.tobytes() + bytes([label]), image, label, None


def with_invalid_counts(found: dict) -> dict:
    """The per-split statistics, each raw split with its invalid examples by kind."""
    statistics = {name: stats for name, stats in found.items() if not name.startswith("invalid/")}
    for name, stats in statistics.items():
        stats["invalid"] = found.get(f"invalid/{name}", {})
    return dict(sorted(statistics.items()))


def assign_split(key: bytes, validation_fraction: float) -> int:
    """0 = train, 1 = validation, by a hash of the example's content key: the same example
    always lands in the same split, whatever the ingest run, runner, ordering or sharding."""
    bucket = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % HASH_BUCKETS
    return int(bucket < validation_fraction * HASH_BUCKETS)


def scale_batch(batch: list[tuple[bytes, np.ndarray, int]]) -> list[tuple[np.ndarray, int]]:
    """Scales a batch at once: one TF op call per few hundred images, not per image."""
    images = scale_pixels(np.stack([example[1] for example in batch])).numpy()
    return [(image, example[2]) for image, example in zip(images, batch)]


class SplitStatistics(beam.CombineFn):
    """Count, per-class histogram, pixel mean/std/min/max and pixel-intensity histogram of
    one split, mergeable across workers."""

    def create_accumulator(self):
        # count, class histogram, pixel sum, sum of squares, min, max, pixel histogram
        return [0, np.zeros(NUM_CLASSES, np.int64), 0.0, 0.0, np.inf, -np.inf, np.zeros(PIXEL_BINS, np.int64)]

    def add_input(self, acc, example):
        image, label = example
        pixels = image.astype(np.float64)
        acc[0] += 1
        acc[1][label] += 1
        acc[2] += pixels.sum()
        acc[3] += np.square(pixels).sum()
        acc[4], acc[5] = min(acc[4], pixels.min()), max(acc[5], pixels.max())
        acc[6] += np.histogram(np.clip(pixels, 0.0, 1.0), bins=PIXEL_BINS, range=(0.0, 1.0))[0]
        return acc

    def merge_accumulators(self, accumulators):
        counts, classes, totals, totals_sq, lows, highs, pixels = zip(*accumulators)
        return [sum(counts), np.sum(classes, axis=0), sum(totals), sum(totals_sq), min(lows), max(highs),
                np.sum(pixels, axis=0)]

    def extract_output(self, acc):
        count, histogram, total, total_sq, low, high, pixels = acc
        n_pixels = max(count, 1) * int(np.prod(SCALED_FEATURES["image"].shape))
        mean = total / n_pixels
        return {
            "count": int(count),
            "class_histogram": {str(c): int(n) for c, n in enumerate(histogram)},
            "pixel_mean": float(mean),
            "pixel_std": float(np.sqrt(max(total_sq / n_pixels - mean * mean, 0.0))),
            "pixel_min": float(low) if count else None,
            "pixel_max": float(high) if count else None,
            "pixel_histogram": [float(n) for n in pixels / max(pixels.sum(), 1)],
        }
