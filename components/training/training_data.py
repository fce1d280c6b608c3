"""Training's input: a preprocessed split streamed from its shards as endless batches.

Apart from the train step so that benchmarks and tests read the training stream
exactly as training does.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import tensorflow as tf

from components.common.records import parse_scaled
from components.common.transform import NUM_CLASSES

PREFETCH_BATCHES = 4
MAX_OPEN_SHARDS = 16
SHUFFLE_BUFFER = 10_000  # serialized examples, ~3 KB each: ~30 MB, whatever the split's size
# Training steps per call of Keras' compiled step function (at most). Between calls, Python
# dispatches the next one while both cores wait: one step per call left `best` 1.5-2 points
# less busy and 5-15% slower (bare fit, 2-core AMX Xeon).
STEPS_PER_EXECUTION = 8


def split_size(transformed: Path, split: str) -> int:
    """The number of examples in a preprocessed split, from the statistics Beam counted."""
    statistics = Path(transformed) / "statistics.json"
    if not statistics.is_file():
        raise FileNotFoundError(f"no statistics.json in {transformed}; run preprocess first")
    count = json.loads(statistics.read_text())[split]["count"]
    if not count:
        raise ValueError(f"the {split} split in {transformed} is empty; widen ingest.train_split "
                         f"or change preprocess.validation_fraction")
    return count


def epoch_steps(count: int, batch_size: int, per_execution: int = 1) -> int:
    """The batches in one pass over `count` examples: enough for none to exceed `batch_size`, and a
    whole number of calls of `per_execution` steps (Keras runs a call's steps whatever the epoch's length)."""
    return math.ceil(math.ceil(count / batch_size) / per_execution) * per_execution


def steps_per_execution(*splits: tuple[int, int]) -> int:
    """The steps per call for a training whose splits are (count, batch_size) pairs (Keras runs the
    training and the validation split with the same): up to STEPS_PER_EXECUTION, no more than the
    shortest epoch, and 1 where a whole number of calls would leave a batch empty."""
    calls = min(STEPS_PER_EXECUTION, *(math.ceil(count / size) for count, size in splits))
    return calls if all(epoch_steps(count, size, calls) <= count for count, size in splits) else 1


def batches(records: tf.data.Dataset, count: int, batch_size: int, *, decode=None, shuffle_seed: int | None = None,
            shuffle_buffer: int = SHUFFLE_BUFFER, skip_epochs: int = 0,
            per_execution: int = 1) -> tuple[tf.data.Dataset, int]:
    """Endless batches of `count` records, decoded batch by batch, and how many make one epoch.

    Each epoch is exactly one pass over the records (shuffled and batched before the
    repeat), in batches of at most `batch_size` that differ by one record at most, in a
    new order drawn from the seed when there is one; only `shuffle_buffer` records are
    held at a time, whatever the split's size. One iterator serves every epoch (Keras
    keeps it when given steps per epoch), and tf.data's autotuning is off:
    the destructor of a finished iterator waited on the autotuning thread for up to as
    long as the epoch had lasted, leaving both cores idle at the boundary (half of some
    epochs). Reading and parsing cost a few percent of a training step, so a fixed
    prefetch keeps the model fed. `skip_epochs` passes over epochs already trained (a
    resumed training) without decoding them. The step count is `epoch_steps`, a multiple of
    `per_execution`.
    """
    if shuffle_seed is not None:
        records = records.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    steps = epoch_steps(count, batch_size, per_execution)
    # Batches as equal as the count allows, none over batch_size. Cut at batch_size, the last of
    # an epoch can be tiny (53,764 examples in 128s left one of 4), and a step on a few images,
    # normalised by BatchNorm over those few, has a huge loss whose gradient Adam's momentum kept
    # pushing for the next steps: the first 30 steps of epochs 2-4 of `best` averaged a loss of
    # 0.66/0.26/0.18 against 0.18/0.11/0.08 with equal batches.
    sizes = [count // steps + (i < count % steps) for i in range(steps)]
    options = tf.data.Options()
    options.autotune.enabled = False
    # Under multi_worker every worker reads the same seeded stream and keeps its share of
    # each batch, so an epoch is still exactly one pass over the split, whatever the shards.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = records.batch(batch_size).rebatch(sizes).repeat().skip(skip_epochs * steps)
    if decode is not None:
        ds = ds.map(decode)
    return ds.prefetch(PREFETCH_BATCHES).with_options(options), steps


def read_split(transformed: Path, split: str, batch_size: int, *, one_hot: bool = False,
               shuffle_seed: int | None = None, shuffle_buffer: int = SHUFFLE_BUFFER,
               skip_epochs: int = 0, per_execution: int = 1) -> tuple[tf.data.Dataset, int]:
    """`batches` of (image, label) streamed from a preprocessed split's TFRecord shards.

    The shards are listed in name order (and shuffled from there with the seed), so a given
    preprocess output always yields the same stream and, with a seed, the same training.
    Nothing holds more than the shuffle buffer and a few batches. Two preprocess runs of the same data
    lay examples out differently (Beam fixes neither shard nor order); the cache reuses
    one preprocess output for as long as the data and code are the same, so that
    difference only shows when preprocess really ran again.
    """
    files = sorted(str(p) for p in Path(transformed).glob(f"{split}-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"no {split} shards in {transformed}; run preprocess first")

    @tf.autograph.experimental.do_not_convert  # plain TF ops; autograph would leave a temp file if killed
    def decode(serialized):
        images, labels = parse_scaled(serialized)
        return images, tf.one_hot(labels, NUM_CLASSES) if one_hot else labels

    # Shards in a new order each epoch, read a record from each in turn: the shuffle buffer
    # then mixes examples from all over the split, not from the first shard's first records.
    shards = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_seed is not None:
        shards = shards.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
    records = shards.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), MAX_OPEN_SHARDS))
    return batches(records, split_size(transformed, split), batch_size, decode=decode,
                   shuffle_seed=shuffle_seed, shuffle_buffer=shuffle_buffer, skip_epochs=skip_epochs,
                   per_execution=per_execution)
