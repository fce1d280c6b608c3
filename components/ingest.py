"""Ingest: MNIST through TensorFlow Datasets into raw tf.train.Example TFRecords.

Output (`examples/`): `train-*.tfrecord` and `test-*.tfrecord`, each record holding
`image` (784 raw uint8 bytes, row-major 28x28) and `label` (int64), plus `ingest.json`
recording what was loaded. Extra labelled images (`extra_dir`) go into their own
train shard, `train-extra-00000-of-00001.tfrecord`, in the same raw form, except a share
held out by content as the users' slice, `users-00000-of-00001.tfrecord`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from components.common.digits import ImageError, labelled_images, load_image, to_mnist
from components.common.records import serialize_example

if not sys.stderr.isatty():
    tfds.disable_progress_bar()  # a person at a terminal sees TFDS's bars; unattended logs stay lines
log = logging.getLogger(__name__)
SPLITS = ("train", "test")
USERS = "users"  # the held-out extra images: the users' slice evaluate judges
EXAMPLES_PER_SHARD = 50_000  # shards keep a later distributed Beam read parallel
PROBE_SECONDS = 5  # offline, TFDS retries the download for minutes before it gives up


class DownloadError(ConnectionError):
    """The dataset is neither prepared nor downloadable from here."""


class MirrorError(FileNotFoundError):
    """The configured folder of original files cannot stand in for the download."""


def ingest(
    examples: Path,
    *,
    dataset: str = "mnist",
    train_split: str = "train",
    test_split: str = "test",
    manual_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    extra_dir: str | Path | None = None,
    extra_holdout: float = 0.0,
) -> dict:
    """Load the two splits through TFDS and write them to `examples`; return ingest.json.

    With `extra_dir`, its labelled images (`<digit>/<name>.png`...) are put in MNIST form
    by `digits.to_mnist`, the function `predict` uses; a share `extra_holdout` of them (by
    a hash of each file's bytes) is the users' slice, `users-*.tfrecord`, which evaluate
    judges and training never sees, and the rest is added to the train split. Files that
    cannot be used are listed in ingest.json with the reason, never fatal.
    """
    if not 0.0 <= extra_holdout <= 1.0:
        raise ValueError(f"ingest.extra_holdout must be a share in [0, 1], got {extra_holdout}")
    if extra_dir and not Path(extra_dir).is_dir():
        raise FileNotFoundError(f"ingest.extra_dir {extra_dir} is not a folder; point it at <digit>/<image> files or set it to ''")
    examples = Path(examples)
    examples.mkdir(parents=True, exist_ok=True)
    builder = prepared_builder(dataset, data_dir, manual_dir, scratch=examples)
    splits = {}
    for name, tfds_split in zip(SPLITS, (train_split, test_split)):
        try:
            dataset_split = builder.as_dataset(split=tfds_split, as_supervised=True)
        except (ValueError, KeyError, AssertionError) as err:
            raise ValueError(
                f"bad TFDS split {tfds_split!r} for ingest.{name}_split ({err}); use e.g. 'train' or 'train[:2000]'"
            ) from None
        splits[name] = {"tfds_split": tfds_split, "count": _write_split(dataset_split, examples, name)}
        if splits[name]["count"] == 0:
            raise ValueError(f"TFDS split {tfds_split!r} for ingest.{name}_split is empty; widen the slice")

    if extra_dir:
        splits["train"]["base_count"] = splits["train"]["count"]
        extra = _write_extra(Path(extra_dir), examples, extra_holdout)
        splits["train"]["count"] += extra["count"]
        if extra["held_out"]["count"]:
            splits[USERS] = {"tfds_split": None, "count": extra["held_out"]["count"]}
    record = {
        "dataset": builder.info.name,
        "version": str(builder.info.version),
        "source": f"manual_dir {Path(manual_dir).resolve()}" if manual_dir else "TFDS download",
        "tfds_data_dir": str(builder.data_dir),
        "splits": splits,
        "features": {"image": "784 raw uint8 bytes, 28x28 row-major", "label": "int64 0-9"},
        **({"extra": extra} if extra_dir else {}),
    }
    (examples / "ingest.json").write_text(json.dumps(record, indent=2))
    return record


def prepared_builder(dataset: str, data_dir=None, manual_dir=None, *, scratch: Path) -> tfds.core.DatasetBuilder:
    """The TFDS builder with its data prepared: downloaded, or built from `manual_dir`'s files.

    TFDS 4.9.10 makes an empty `tempfile.mkdtemp("tfds")` folder whenever it opens a data
    dir not yet prepared, and never removes it; the temp dir is pointed into `scratch`
    meanwhile, and that folder removed, so nothing is left in the system temp dir.
    """
    holder = Path(tempfile.mkdtemp(prefix=".tfds-tmp-", dir=scratch))
    saved, tempfile.tempdir = tempfile.tempdir, str(holder)
    try:
        builder = tfds.builder(dataset, data_dir=str(data_dir) if data_dir else None)
        download_config = None
        if manual_dir:
            _check_mirror(builder, Path(manual_dir))
            download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
        elif not builder.is_prepared():
            _check_reachable(builder)
        builder.download_and_prepare(download_config=download_config)
        return builder
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(holder, ignore_errors=True)


def _check_reachable(builder: tfds.core.DatasetBuilder) -> None:
    """Fails in seconds, with the fix, where TFDS would retry for minutes and then print a
    urllib3 error. Behind a proxy the direct probe proves nothing, so it is skipped."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    for url in builder.url_infos or {}:
        host = urlparse(url).hostname
        try:
            socket.create_connection((host, 443), timeout=PROBE_SECONDS).close()
        except OSError as err:
            raise DownloadError(
                f"{builder.name} could not be downloaded: {host} is unreachable ({err}); offline, point the "
                f"pipeline at the original files: make pipeline MANUAL_DIR=dir, or --set ingest.manual_dir=dir"
            ) from None
        return  # every file comes from the same host


def _check_mirror(builder: tfds.core.DatasetBuilder, manual_dir: Path) -> None:
    # TFDS falls back to the network for any file it does not find in manual_dir;
    # offline that hangs, so name the missing file before it gets the chance.
    if not manual_dir.is_dir():
        raise MirrorError(f"ingest.manual_dir {manual_dir} is not a folder; point it at the original MNIST files")
    for info in builder.url_infos.values():
        path = manual_dir / info.filename
        if not path.is_file():
            raise MirrorError(
                f"mirror file missing: {path}; copy {info.filename} there or unset ingest.manual_dir to download"
            )
        if path.stat().st_size != int(info.size):
            raise MirrorError(
                f"mirror file {path} has {path.stat().st_size} bytes, TFDS expects {int(info.size)}; replace it with the original"
            )
        # TFDS's own mismatch message names a temporary "downloaded to" path, not this file.
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != info.checksum:
            raise MirrorError(
                f"mirror file {path} has sha256 {digest}, TFDS expects {info.checksum}; replace it with the original"
            )


def held_out(data: bytes, share: float) -> bool:
    """Whether an extra image belongs to the users' slice: by a hash of the file's bytes, so
    the same files are held out every time, wherever the folder lies and whatever it is called."""
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2**64 < share


def _write_extra(folder: Path, examples: Path, holdout: float) -> dict:
    """The extra labelled images, raw like the rest: a `holdout` share (by content) as the
    users' slice (`users-*`), never trained on; the others as one more train shard (`train-extra-*`)."""
    found, skipped = labelled_images(folder)
    counts, kept_out = {"train": [0] * 10, "users": [0] * 10}, []
    paths = {"train": examples / "train-extra-00000-of-00001.tfrecord",
             "users": examples / f"{USERS}-00000-of-00001.tfrecord"}
    with tf.io.TFRecordWriter(str(paths["train"])) as train_writer, tf.io.TFRecordWriter(str(paths["users"])) as users_writer:
        for path, label in found:
            try:
                image = to_mnist(load_image(path))
            except ImageError as err:
                skipped.append({"path": str(path), "reason": str(err)})
                continue
            split = "users" if held_out(path.read_bytes(), holdout) else "train"
            (users_writer if split == "users" else train_writer).write(
                serialize_example(image.astype(np.uint8).tobytes(), label))
            counts[split][label] += 1
            if split == "users":
                kept_out.append(path.relative_to(folder).as_posix())
    if not sum(counts["users"]):
        paths["users"].unlink()  # no slice: evaluate judges on the test split alone, as without extra images
    for bad in skipped:
        log.warning("extra image skipped: %s: %s", bad["path"], bad["reason"])
    return {"folder": str(folder.resolve()), "count": sum(counts["train"]),
            "per_digit": {str(d): n for d, n in enumerate(counts["train"])},
            "held_out": {"share": holdout, "count": sum(counts["users"]),
                         "per_digit": {str(d): n for d, n in enumerate(counts["users"])}, "files": kept_out},
            "skipped": skipped}


def _write_split(dataset: tf.data.Dataset, folder: Path, name: str) -> int:
    n = int(dataset.cardinality())
    num_shards = max(1, math.ceil(n / EXAMPLES_PER_SHARD))
    writers = [
        tf.io.TFRecordWriter(str(folder / f"{name}-{i:05d}-of-{num_shards:05d}.tfrecord")) for i in range(num_shards)
    ]
    count = 0
    for images, labels in tfds.as_numpy(dataset.batch(4096)):
        for image, label in zip(images.astype("uint8"), labels):
            writers[count % num_shards].write(serialize_example(image.tobytes(), label))
            count += 1
    for writer in writers:
        writer.close()
    return count
