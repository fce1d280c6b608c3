"""Train: a Keras model from a named preset on the preprocessed TFRecords.

Output (`model/`): `model.keras`, `history.json` (per-epoch metrics), `training.json`
(resolved settings, epochs run, why training stopped, training seconds) and
TensorBoard logs under `logs/`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from components import models
from components.presets import PRESETS, Preset
from components.preprocess import FEATURES
from components.transform import NUM_CLASSES

log = logging.getLogger(__name__)


class StopAtThreshold(keras.callbacks.Callback):
    """Stops training once `monitor` reaches `threshold` (>= for scores, <= for losses)."""

    def __init__(self, monitor: str, threshold: float):
        super().__init__()
        self.monitor, self.threshold = monitor, threshold
        self.reason = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(
                f"train.monitor {self.monitor!r} is not a logged metric; choose one of {', '.join(sorted(logs))}"
            )
        value = logs[self.monitor]
        reached = value <= self.threshold if "loss" in self.monitor else value >= self.threshold
        if reached:
            self.reason = f"{self.monitor} {value:.4f} reached threshold {self.threshold} at epoch {epoch + 1}"
            log.info("stopping training: %s", self.reason)
            self.model.stop_training = True


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch, so unattended runs keep their progress in the run log."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()) if k != "learning_rate")
        log.info("epoch %d/%d %s (%.1fs)", epoch + 1, self.params["epochs"], metrics, time.perf_counter() - self._started)


def resolve_settings(preset: str, **overrides) -> Preset:
    """The preset's settings with every non-None override applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    settings = dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    if settings.stop == "threshold" and settings.threshold is None:
        raise ValueError("train.stop=threshold needs train.threshold, e.g. --set train.threshold=0.995")
    if settings.stop == "early_stopping" and settings.patience is None:
        raise ValueError("train.stop=early_stopping needs train.patience, e.g. --set train.patience=3")
    return settings


def stop_callback(settings: Preset) -> keras.callbacks.Callback | None:
    """The callback that ends training early, as the settings ask; None runs every epoch."""
    if settings.stop == "threshold":
        return StopAtThreshold(settings.monitor, settings.threshold)
    if settings.stop == "early_stopping":
        return keras.callbacks.EarlyStopping(monitor=settings.monitor, patience=settings.patience, restore_best_weights=True)
    return None


def read_split(transformed: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All examples of a preprocessed split, in an order fixed by their content.

    Beam spreads examples over shards in no fixed order, so two preprocess runs of the
    same data differ in layout; sorting by a content hash makes the seeded shuffle,
    and so the whole training run, reproducible across them.
    """
    files = sorted(str(p) for p in Path(transformed).glob(f"{split}-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"no {split} shards in {transformed}; run preprocess first")
    images, labels = [], []
    for batch in tf.data.TFRecordDataset(files).batch(8192).map(lambda r: tf.io.parse_example(r, FEATURES)):
        images.append(batch["image"].numpy())
        labels.append(batch["label"].numpy())
    if not images:
        raise ValueError(f"the {split} split in {transformed} is empty; widen ingest.train_split "
                         f"or change preprocess.validation_fraction")
    images, labels = np.concatenate(images), np.concatenate(labels)
    keys = np.array([int.from_bytes(hashlib.blake2b(image.tobytes() + bytes([label]), digest_size=8).digest(), "big")
                     for image, label in zip(images, labels)], dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    return images[order], labels[order]


def load_split(transformed: Path, split: str, batch_size: int, *, one_hot: bool = False,
               shuffle_seed: int | None = None) -> tf.data.Dataset:
    """A split as batches of (image, label); shuffled afresh each epoch when given a seed."""
    images, labels = read_split(transformed, split)
    if one_hot:
        labels = keras.utils.to_categorical(labels, NUM_CLASSES)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _optimizer(settings: Preset, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = settings.learning_rate
    if settings.schedule == "warmup_cosine":
        # One linear warm-up epoch from lr/30, then cosine decay to zero at the last epoch.
        total = settings.epochs * steps_per_epoch
        lr = keras.optimizers.schedules.CosineDecay(
            lr / 30, decay_steps=max(total - steps_per_epoch, 1), warmup_target=lr, warmup_steps=steps_per_epoch
        )
    return {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD}[
        settings.optimizer
    ](learning_rate=lr)


def train(transformed: Path, model: Path, *, preset: str = "best", seed: int = 42, **overrides) -> dict:
    """Train preset `preset` on `transformed` and save it into `model`; return training.json.

    `overrides` are the preset fields (epochs, batch_size, optimizer, learning_rate,
    stop, monitor, threshold, patience); None keeps the preset's value.
    """
    settings = resolve_settings(preset, **overrides)
    transformed, model_dir = Path(transformed), Path(model)
    keras.utils.set_random_seed(seed)
    train_ds = load_split(transformed, "train", settings.batch_size, one_hot=settings.one_hot_labels, shuffle_seed=seed)
    val_ds = load_split(transformed, "validation", 1024, one_hot=settings.one_hot_labels)

    net = models.build(settings.architecture)
    net.compile(
        optimizer=_optimizer(settings, steps_per_epoch=len(train_ds)),
        loss="categorical_crossentropy" if settings.one_hot_labels else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    stopper = stop_callback(settings)
    callbacks = [EpochLog(), keras.callbacks.TensorBoard(log_dir=str(model_dir / "logs"))] + ([stopper] if stopper else [])

    model_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    history = net.fit(
        train_ds, validation_data=val_ds, epochs=settings.epochs, callbacks=callbacks, verbose=0,
        shuffle=False,  # tf.data already shuffles, reproducibly, with the run's seed
    )
    train_seconds = time.perf_counter() - started
    epochs_run = len(history.epoch)

    reason = _stop_reason(stopper, settings, epochs_run)
    log.info("training stopped after %d epoch(s): %s", epochs_run, reason)
    net.save(model_dir / "model.keras")
    (model_dir / "history.json").write_text(json.dumps({k: [float(v) for v in vs] for k, vs in history.history.items()}, indent=2))
    record = {
        "preset": preset,
        "settings": {k: v for k, v in dataclasses.asdict(settings).items()},
        "seed": seed,
        "epochs_run": epochs_run,
        "stop_reason": reason,
        "train_seconds": round(train_seconds, 2),
        "final_metrics": {k: float(vs[-1]) for k, vs in history.history.items()},
    }
    (model_dir / "training.json").write_text(json.dumps(record, indent=2))
    return record


def _stop_reason(stopper, settings: Preset, epochs_run: int) -> str:
    if isinstance(stopper, StopAtThreshold) and stopper.reason:
        return f"threshold: {stopper.reason}"
    if isinstance(stopper, keras.callbacks.EarlyStopping) and stopper.stopped_epoch > 0:
        return (
            f"early stopping: {settings.monitor} did not improve for {settings.patience} epoch(s); "
            f"restored the weights of epoch {stopper.best_epoch + 1}"
        )
    return f"epoch cap: ran all {epochs_run} of {settings.epochs} epoch(s)"
