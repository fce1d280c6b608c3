"""Preprocess on other Beam runner modes: the same examples and statistics as the default runner."""
from __future__ import annotations

import collections
import numpy as np
import pytest


@pytest.fixture(scope="module")
def slice_examples(tmp_path_factory, tfds_dir, mirror):
    from components.ingest import ingest

    examples = tmp_path_factory.mktemp("portable") / "examples"
    ingest(examples, train_split="train[:1000]", test_split="test[:200]", manual_dir=mirror, data_dir=tfds_dir)
    return examples


@pytest.fixture(scope="module")
def by_default_runner(slice_examples):
    from components.preprocess import preprocess

    out = slice_examples.parent / "default"
    return out, preprocess(slice_examples, out)


def _records(folder) -> dict[str, collections.Counter]:
    import tensorflow as tf

    # Parsed, not raw bytes: protobuf writes a feature map in an order that varies by process.
    def content(record):
        features = tf.train.Example.FromString(record).features.feature
        return np.asarray(features["image"].float_list.value, np.float32).tobytes(), features["label"].int64_list.value[0]

    return {split: collections.Counter(content(r.numpy()) for r in tf.data.TFRecordDataset(
        sorted(map(str, folder.glob(f"{split}-*.tfrecord"))))) for split in ("train", "validation")}


def _same_output(out, statistics, default):
    default_dir, default_statistics = default
    assert statistics.keys() == default_statistics.keys()
    for split, stats in statistics.items():
        expected = default_statistics[split]
        assert stats["count"] == expected["count"] and stats["class_histogram"] == expected["class_histogram"]
        assert stats["invalid"] == expected["invalid"]
        # Sums merged in another order: equal to float precision, not bit for bit.
        for key in ("pixel_mean", "pixel_std", "pixel_min", "pixel_max"):
            assert stats[key] == pytest.approx(expected[key], rel=1e-9)
        assert stats["pixel_histogram"] == pytest.approx(expected["pixel_histogram"], rel=1e-12)
    assert _records(out) == _records(default_dir)


def test_multi_processing_with_two_workers_matches_the_default_runner(slice_examples, by_default_runner, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # the job must not depend on the launcher's working directory
    from components.preprocess import preprocess

    out = tmp_path / "multi"
    statistics = preprocess(slice_examples, out, pipeline_options=[
        "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    _same_output(out, statistics, by_default_runner)
