"""The two TFRecord formats the steps hand each other, each with its writer and reader.

- raw (ingest's output, the test split evaluate and export read): `image`, 784 uint8
  bytes of a row-major 28x28 picture, and `label`, int64;
- scaled (preprocess's train and validation output): `image`, float32 28x28x1 in [0, 1],
  and `label`, int64.

A module of its own, free of every other project module, so that a step's code
fingerprint covers the format it reads and not the code of the step that wrote it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

RAW_FEATURES = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
SCALED_FEATURES = {
    "image": tf.io.FixedLenFeature([28, 28, 1], tf.float32),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def _serialized(feature: dict) -> bytes:
    # A tf.train.Example's features are a protobuf map, written in an order that changes from
    # process to process unless asked otherwise: the same example then has other bytes, and two
    # runs of one step over the same data would make different files.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def serialize_example(image, label) -> bytes:
    """A raw example: `image` as its uint8 bytes."""
    return _serialized({
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes(image)])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    })


def parse_example(record: bytes):
    """The inverse of `serialize_example`: (784 uint8 pixels, label)."""
    features = tf.train.Example.FromString(record).features.feature
    return np.frombuffer(features["image"].bytes_list.value[0], dtype=np.uint8), int(features["label"].int64_list.value[0])


def iter_examples(examples: Path, split: str, batch_size: int = 1000):
    """One split of an ingest output, batch by batch: (uint8 images (n, 28, 28), int64 labels (n,)).
    Only one batch is in memory at a time, whatever the split's size."""
    files = sorted(str(p) for p in Path(examples).glob(f"{split}-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"no {split} examples in {examples}; run ingest first")

    @tf.autograph.experimental.do_not_convert  # plain TF ops; autograph would leave a temp file if killed
    def decode(records):
        example = tf.io.parse_example(records, RAW_FEATURES)
        return tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), (-1, 28, 28)), example["label"]

    yield from tf.data.TFRecordDataset(files).batch(batch_size).map(decode).as_numpy_iterator()


def read_examples(examples: Path, split: str):
    """One split of an ingest output at once (for small splits and tests): `iter_examples`, joined."""
    images, labels = zip(*iter_examples(examples, split))
    return np.concatenate(images), np.concatenate(labels)


def serialize_scaled(example: tuple[np.ndarray, int]) -> bytes:
    """A scaled example from (float32 image, label)."""
    image, label = example
    return _serialized({
        "image": tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel())),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    })


def parse_scaled(records):
    """The inverse of `serialize_scaled`, for a batch of records in a tf.data pipeline:
    (float32 images (n, 28, 28, 1), int64 labels (n,))."""
    example = tf.io.parse_example(records, SCALED_FEATURES)
    return example["image"], example["label"]
