import json

import numpy as np
import tensorflow as tf

from components.common.records import read_examples
from components.common.transform import scale_pixels
from components.ingest import ingest
from components.preprocess import assign_split, preprocess
from components.training.training_data import read_split


def _shards(folder, split):
    return sorted(str(p) for p in folder.glob(f"{split}-*.tfrecord"))


def test_assign_split_is_stable_and_near_the_fraction():
    records = [np.random.default_rng(i).bytes(100) for i in range(4000)]
    first = [assign_split(r, 0.1) for r in records]
    assert first == [assign_split(r, 0.1) for r in records]
    assert 0.08 < np.mean(first) < 0.12
    assert 0.27 < np.mean([assign_split(r, 0.3) for r in records]) < 0.33


def _fields(message: bytes):
    """The length-delimited field-1 payloads of a protobuf message (all an Example holds)."""
    i = 0
    while i < len(message):
        assert message[i] == 0x0A
        length, shift, i = 0, 0, i + 1
        while True:
            byte = message[i]
            length, shift, i = length | (byte & 0x7F) << shift, shift + 7, i + 1
            if byte < 0x80:
                break
        yield message[i : i + length]
        i += length


def _field(payload: bytes) -> bytes:
    length, varint = len(payload), bytearray()
    while True:
        varint.append((length & 0x7F) | (0x80 if length > 0x7F else 0))
        length >>= 7
        if not length:
            return b"\x0a" + bytes(varint) + payload


def test_the_split_of_an_example_does_not_depend_on_how_its_record_was_serialized():
    from components.common.records import parse_example, serialize_example
    from components.preprocess import decode_raw_example

    # Protobuf writes a tf.train.Example's feature map in an order that differs between
    # processes (seen here: two ingest runs of the same data split it differently).
    record = serialize_example(bytes(range(256)) * 3 + bytes(16), 7)
    (features,) = _fields(record)
    reordered = _field(b"".join(_field(entry) for entry in reversed(list(_fields(features)))))
    assert reordered != record
    image, label = parse_example(reordered)
    assert label == 7 and image.tobytes() == parse_example(record)[0].tobytes()
    assert decode_raw_example(reordered)[0] == decode_raw_example(record)[0]
    assert assign_split(decode_raw_example(reordered)[0], 0.5) == assign_split(decode_raw_example(record)[0], 0.5)


def test_scale_pixels_is_the_same_in_eager_and_graph_mode():
    pixels = (np.arange(28 * 28) % 256).astype(np.uint8).reshape(1, 28, 28)
    eager = scale_pixels(pixels).numpy()
    graph = tf.function(scale_pixels)(tf.constant(pixels)).numpy()
    assert eager.shape == (1, 28, 28, 1) and eager.dtype == np.float32
    np.testing.assert_array_equal(eager, graph)
    assert eager.min() == 0.0 and eager.max() == 1.0


def test_preprocess_splits_scales_and_counts(tmp_path, mirror, tfds_dir):
    examples = tmp_path / "examples"
    ingest(examples, train_split="train[:1000]", test_split="test[:200]", manual_dir=mirror, data_dir=tfds_dir)
    stats = preprocess(examples, tmp_path / "t1", validation_fraction=0.2, num_shards=3)

    assert set(stats) == {"train", "validation", "test"}
    assert stats["train"]["count"] + stats["validation"]["count"] == 1000
    assert 0.15 < stats["validation"]["count"] / 1000 < 0.25
    assert stats["test"]["count"] == 200
    assert len(_shards(tmp_path / "t1", "train")) == 3
    for split in ("train", "validation"):
        assert sum(stats[split]["class_histogram"].values()) == stats[split]["count"]
        images, labels = (t.numpy() for t in next(iter(read_split(tmp_path / "t1", split, stats[split]["count"])[0])))
        assert images.shape == (stats[split]["count"], 28, 28, 1)
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert np.isclose(images.mean(), stats[split]["pixel_mean"], atol=1e-6)
        assert np.isclose(images.std(), stats[split]["pixel_std"], atol=1e-5)
        counts = np.bincount(labels, minlength=10)
        assert {str(c): int(n) for c, n in enumerate(counts)} == stats[split]["class_histogram"]

    raw_images, _ = read_examples(examples, "test")
    assert np.isclose(stats["test"]["pixel_mean"], raw_images.mean() / 255.0, atol=1e-6)

    # Deterministic: a second run (other shard count) puts every example in the same split.
    again = preprocess(examples, tmp_path / "t2", validation_fraction=0.2, num_shards=1)
    assert again == stats
    assert json.loads((tmp_path / "t2" / "statistics.json").read_text()) == stats


def test_preprocess_without_ingest_output_says_so(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="run ingest first"):
        preprocess(tmp_path / "empty", tmp_path / "out")
