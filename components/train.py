"""Train: a Keras model from a named preset on the preprocessed TFRecords.

Output (`model/`): `model.keras`, `history.json` (per-epoch metrics), `training.json`
(resolved settings, epochs run, why training stopped, training seconds) and
TensorBoard logs under `logs/`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from components import distribute, models
from components.presets import PRESETS, Preset
from components.training_data import SHUFFLE_BUFFER, read_split, split_size

log = logging.getLogger(__name__)
CORES = len(os.sched_getaffinity(0))
VALIDATION_BATCH = 1024


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
    """One log line per epoch, so unattended runs keep their progress in the run log, and
    each epoch's wall and process CPU seconds, so an idle core shows up in training.json."""

    def __init__(self, backup: "Backup | None" = None):
        super().__init__()
        self.backup = backup
        self.timings: list[dict] = backup.timings if backup else []

    def on_epoch_begin(self, epoch, logs=None):
        self._started, self._cpu_started = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._started
        cpu_seconds = time.process_time() - self._cpu_started
        timing = {"epoch": epoch + 1, "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3)}
        if self.backup:
            self.backup.record(logs or {}, timing)  # appends to the same list of timings
        else:
            self.timings.append(timing)
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()) if k != "learning_rate")
        log.info("epoch %d/%d %s (%.1fs, CPU %.0f%% of %d cores)", epoch + 1, self.params["epochs"], metrics, seconds,
                 100 * cpu_seconds / seconds / CORES, CORES)


class ProgressBar(keras.callbacks.Callback):
    """A live bar per epoch (steps, rate, ETA, running metrics) for a person at a terminal;
    unattended runs keep EpochLog's one line per epoch only."""

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.params["steps"], desc=f"epoch {epoch + 1}/{self.params['epochs']}",
                        unit="step", leave=False, file=sys.stderr)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if batch % 20 == 0:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items()}, refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()  # before EpochLog's line, so the two never share a terminal line


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


def compiled_model(settings: Preset, steps_per_epoch: int) -> keras.Model:
    """A fresh network of the preset, compiled with its optimizer, schedule and loss."""
    net = models.build(settings.architecture)
    net.compile(
        optimizer=_optimizer(settings, steps_per_epoch),
        loss="categorical_crossentropy" if settings.one_hot_labels else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return net


class Backup(keras.callbacks.BackupAndRestore):
    """Keras' per-epoch backup (weights, optimizer state, epoch), plus the metrics and
    timings of the epochs already run, so a resumed training reports all of them."""

    def __init__(self, backup_dir: Path):
        super().__init__(str(backup_dir), double_checkpoint=True)  # a kill mid-save falls back one epoch
        self.done = Path(backup_dir) / "epochs_done.json"
        state = json.loads(self.done.read_text()) if self.done.is_file() else {}
        # The epoch to resume at: Keras' own record, since its weights are what gets restored.
        metadata = Path(backup_dir) / "training_metadata.json"
        self.resumed_at = json.loads(metadata.read_text())["epoch"] if metadata.is_file() else 0
        self.history = {k: v[: self.resumed_at] for k, v in state.get("history", {}).items()}
        self.timings = state.get("timings", [])[: self.resumed_at]

    def record(self, logs: dict, timing: dict) -> None:
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self.timings.append(timing)
        Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        scratch = self.done.with_suffix(".tmp")
        scratch.write_text(json.dumps({"history": self.history, "timings": self.timings}))
        os.replace(scratch, self.done)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)  # deletes Keras' files once training has finished
        self.done.unlink(missing_ok=True)


def train(transformed: Path, model: Path, *, preset: str = "best", seed: int = 42, strategy: str = "default",
          backup_dir: Path | None = None, shuffle_buffer: int = SHUFFLE_BUFFER, **overrides) -> dict:
    """Train preset `preset` on `transformed` and save it into `model`; return training.json.

    `overrides` are the preset fields (epochs, batch_size, optimizer, learning_rate,
    stop, monitor, threshold, patience); None keeps the preset's value. The training split
    streams from its shards through a shuffle buffer of `shuffle_buffer` records. `strategy`
    names the `tf.distribute` strategy (components/distribute.py); the saved model is the
    same Keras model whichever trained it. With `backup_dir`, every finished epoch is backed
    up there (each worker of a multi-worker training in its own folder), and a training
    killed and started again with the same backup_dir resumes after the last finished epoch.
    """
    distribution = distribute.strategy(strategy)  # first: multi_worker must precede any TensorFlow op
    role = distribute.worker(strategy)
    settings = resolve_settings(preset, **overrides)
    transformed, model_dir = Path(transformed), Path(model)
    keras.utils.set_random_seed(seed)  # the same on every worker: they draw the same shuffles
    if backup_dir and role["task"]:
        backup_dir = Path(backup_dir) / role["task"].replace(":", "-")
    backup = Backup(backup_dir) if backup_dir else None
    resumed_at = backup.resumed_at if backup else 0
    if resumed_at:
        log.info("resuming training after epoch %d from the backup in %s", resumed_at, backup_dir)
    # A resumed training skips the epochs already run: they drew their shuffles from the same seeded sequence.
    train_ds, steps_per_epoch = read_split(transformed, "train", settings.batch_size, one_hot=settings.one_hot_labels,
                                           shuffle_seed=seed, shuffle_buffer=shuffle_buffer, skip_epochs=resumed_at)
    val_ds, validation_steps = read_split(transformed, "validation", VALIDATION_BATCH, one_hot=settings.one_hot_labels)

    with distribution.scope():
        net = compiled_model(settings, steps_per_epoch)
    distribute.prepare_fit(net, train_ds, distribution)
    stopper = stop_callback(settings)
    epoch_log = EpochLog(backup)
    bar = [ProgressBar()] if sys.stderr.isatty() else []
    callbacks = [*bar, epoch_log, keras.callbacks.TensorBoard(log_dir=str(model_dir / "logs"))] + [
        c for c in (backup, stopper) if c]

    # TensorFlow's own device lines are kept off the console (pipeline/console.py): say it here.
    gpus = tf.config.list_logical_devices("GPU")
    log.info("training on %s, strategy %s with %d replica(s)%s", ", ".join(d.name for d in gpus) if gpus
             else "the CPU (no GPU found)", strategy, distribution.num_replicas_in_sync,
             f", as {role['task']} of {role['workers']} workers" if role["task"] else "")
    model_dir.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    fit = net.fit(
        train_ds, validation_data=val_ds, epochs=settings.epochs, callbacks=callbacks, verbose=0,
        steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
        shuffle=False,  # tf.data already shuffles, reproducibly, with the run's seed
    )
    train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    history = backup.history if backup else fit.history  # with a backup: the epochs before a resume too
    epochs_run = len(epoch_log.timings)

    reason = _stop_reason(stopper, settings, epochs_run)
    log.info("training stopped after %d epoch(s): %s", epochs_run, reason)
    net.save(model_dir / "model.keras")
    (model_dir / "history.json").write_text(json.dumps({k: [float(v) for v in vs] for k, vs in history.items()}, indent=2))
    record = {
        "preset": preset,
        "settings": {k: v for k, v in dataclasses.asdict(settings).items()},
        "seed": seed,
        "strategy": strategy,
        "replicas": distribution.num_replicas_in_sync,
        "worker": role,
        "shuffle_buffer": shuffle_buffer,
        "epochs_run": epochs_run,
        "stop_reason": reason,
        "train_seconds": round(train_seconds, 2),
        "train_cpu_seconds": round(train_cpu_seconds, 2),
        "train_examples": split_size(transformed, "train"),
        "epoch_timings": epoch_log.timings,
        "resumed_after_epoch": resumed_at,
        "final_metrics": {k: float(vs[-1]) for k, vs in history.items()},
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
