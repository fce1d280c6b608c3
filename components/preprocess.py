"""Preprocess: an Apache Beam pipeline from raw examples to model-ready TFRecords.

Reads the ingest output, scales pixels with `transform.scale_pixels` (the function the
serving graph also uses), splits train into train/validation by a hash of each raw
example (stable across runs and runners), and writes:
  `train-*.tfrecord`, `validation-*.tfrecord`: `image` float32 28x28x1 in [0, 1], `label` int64;
  `statistics.json`: per split (train, validation, test) the count, the per-class
  histogram and the pixel mean/std, all computed in Beam.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from components.ingest import parse_example
from components.transform import NUM_CLASSES, scale_pixels

FEATURES = {
    "image": tf.io.FixedLenFeature([28, 28, 1], tf.float32),
    "label": tf.io.FixedLenFeature([], tf.int64),
}
HASH_BUCKETS = 10_000


def preprocess(
    examples: Path,
    transformed: Path,
    *,
    validation_fraction: float = 0.1,
    runner: str = "FnApiRunner",
    pipeline_options: list[str] | tuple[str, ...] = (),
    num_shards: int = 2,
) -> dict:
    """Run the Beam pipeline; return the statistics it wrote."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    examples, transformed = Path(examples), Path(transformed)
    for split in ("train", "test"):
        if not list(examples.glob(f"{split}-*.tfrecord")):
            raise FileNotFoundError(f"no {split} examples in {examples}; run ingest first")
    transformed.mkdir(parents=True, exist_ok=True)
    options = PipelineOptions([f"--runner={runner}", *pipeline_options])

    with beam.Pipeline(options=options) as p:
        def read(split):
            return (
                p
                | f"Read{split}" >> beam.io.ReadFromTFRecord(str(examples / f"{split}-*.tfrecord"))
                | f"Decode{split}" >> beam.Map(decode_raw_example)
            )

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
                    | f"Serialize{name}" >> beam.Map(serialize_transformed)
                    | f"Write{name}" >> beam.io.WriteToTFRecord(
                        str(transformed / name), file_name_suffix=".tfrecord", num_shards=num_shards
                    )
                )
            statistics.append(
                scaled | f"Stats{name}" >> beam.CombineGlobally(SplitStatistics()) | f"Key{name}" >> beam.Map(
                    lambda stats, name=name: (name, stats)
                )
            )
        (
            statistics
            | "AllStats" >> beam.Flatten()
            | "OneDict" >> beam.combiners.ToDict()
            | "ToJson" >> beam.Map(lambda d: json.dumps(dict(sorted(d.items())), indent=2))
            | "WriteStats" >> beam.io.WriteToText(
                str(transformed / "statistics"), file_name_suffix=".json", num_shards=1, shard_name_template=""
            )
        )
    return json.loads((transformed / "statistics.json").read_text())


def decode_raw_example(record: bytes) -> tuple[bytes, np.ndarray, int]:
    """Raw ingest record -> (record bytes for hashing, uint8 image, label)."""
    return (record, *parse_example(record))


def assign_split(record: bytes, validation_fraction: float) -> int:
    """0 = train, 1 = validation, by a hash of the raw record: the same example always
    lands in the same split, whatever the runner, ordering or sharding."""
    bucket = int.from_bytes(hashlib.sha256(record).digest()[:8], "big") % HASH_BUCKETS
    return int(bucket < validation_fraction * HASH_BUCKETS)


def scale_batch(batch: list[tuple[bytes, np.ndarray, int]]) -> list[tuple[np.ndarray, int]]:
    """Scales a batch at once: one TF op call per few hundred images, not per image."""
    images = scale_pixels(np.stack([image for _, image, _ in batch])).numpy()
    return [(image, label) for image, (_, _, label) in zip(images, batch)]


def serialize_transformed(example: tuple[np.ndarray, int]) -> bytes:
    image, label = example
    feature = {
        "image": tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel())),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class SplitStatistics(beam.CombineFn):
    """Count, per-class histogram and pixel mean/std of one split, mergeable across workers."""

    def create_accumulator(self):
        return [0, np.zeros(NUM_CLASSES, np.int64), 0.0, 0.0]  # count, histogram, sum, sum of squares

    def add_input(self, acc, example):
        image, label = example
        pixels = image.astype(np.float64)
        acc[0] += 1
        acc[1][label] += 1
        acc[2] += pixels.sum()
        acc[3] += np.square(pixels).sum()
        return acc

    def merge_accumulators(self, accumulators):
        counts, histograms, totals, totals_sq = zip(*accumulators)
        return [sum(counts), np.sum(histograms, axis=0), sum(totals), sum(totals_sq)]

    def extract_output(self, acc):
        count, histogram, total, total_sq = acc
        n_pixels = max(count, 1) * int(np.prod(FEATURES["image"].shape))
        mean = total / n_pixels
        return {
            "count": int(count),
            "class_histogram": {str(c): int(n) for c, n in enumerate(histogram)},
            "pixel_mean": float(mean),
            "pixel_std": float(np.sqrt(max(total_sq / n_pixels - mean * mean, 0.0))),
        }
