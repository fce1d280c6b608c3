"""Train: a Keras model from a named preset on the preprocessed TFRecords.

Output (`model/`): `model.keras`, `history.json` (per-epoch metrics), `training.json`
(resolved settings, epochs run, why training stopped, training seconds) and
TensorBoard logs under `logs/`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from components.training import distribute
from components.training.callbacks import Backup, EpochLog, ProgressBar, stop_callback, stop_reason
from components.training.models import compiled_model, in_float32
from components.training.presets import resolve_settings
from components.training.training_data import SHUFFLE_BUFFER, read_split, split_size, steps_per_execution

log = logging.getLogger(__name__)
VALIDATION_BATCH = 1024


def train(transformed: Path, model: Path, *, preset: str = "best", seed: int = 42, strategy: str = "default",
          backup_dir: Path | None = None, shuffle_buffer: int = SHUFFLE_BUFFER, **overrides) -> dict:
    """Train preset `preset` on `transformed` and save it into `model`; return training.json.

    `overrides` are the preset fields (epochs, batch_size, optimizer, learning_rate, stop,
    monitor, threshold, patience, precision); None keeps the preset's value. The training
    split streams from its shards through a shuffle buffer of `shuffle_buffer` records.
    `strategy` names the `tf.distribute` strategy (components/training/distribute.py); the saved model
    is the same Keras model, in float32, whichever trained it and in whatever precision.
    With `backup_dir`, every finished epoch is backed up there (each worker of a multi-worker
    training in its own folder), and a training killed and started again with the same
    backup_dir resumes after the last finished epoch.
    """
    distribution = distribute.strategy(strategy)  # first: multi_worker must precede any TensorFlow op
    role = distribute.worker(strategy)
    settings = resolve_settings(preset, **overrides)
    transformed, model_dir = Path(transformed), Path(model)
    keras.utils.set_random_seed(seed)  # the same on every worker: they draw the same shuffles
    backup = _backup(backup_dir, role)
    resumed_at = backup.resumed_at if backup else 0

    train_examples = split_size(transformed, "train")
    per_call = steps_per_execution((train_examples, settings.batch_size),
                                   (split_size(transformed, "validation"), VALIDATION_BATCH))
    # A resumed training skips the epochs already run: they drew their shuffles from the same seeded sequence.
    train_ds, steps_per_epoch = read_split(transformed, "train", settings.batch_size, one_hot=settings.one_hot_labels,
                                           shuffle_seed=seed, shuffle_buffer=shuffle_buffer, skip_epochs=resumed_at,
                                           per_execution=per_call)
    val_ds, validation_steps = read_split(transformed, "validation", VALIDATION_BATCH, one_hot=settings.one_hot_labels,
                                          per_execution=per_call)

    with distribution.scope():
        net, trainer = compiled_model(settings, steps_per_epoch, per_call)

    stopper, epoch_log = stop_callback(settings), EpochLog(backup)
    callbacks = [*([ProgressBar()] if sys.stderr.isatty() else []), epoch_log,
                 keras.callbacks.TensorBoard(log_dir=str(model_dir / "logs")), *(c for c in (backup, stopper) if c)]
    _log_devices(strategy, distribution, role)
    model_dir.mkdir(parents=True, exist_ok=True)
    with distribute.fit_patch(trainer, train_ds, distribution):
        started, cpu_started = time.perf_counter(), time.process_time()
        fit = trainer.fit(
            train_ds, validation_data=val_ds, epochs=settings.epochs, callbacks=callbacks, verbose=0,
            steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
            shuffle=False,  # tf.data already shuffles, reproducibly, with the run's seed
        )
        train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    history = backup.history if backup else fit.history  # with a backup: the epochs before a resume too
    epochs_run = len(epoch_log.timings)
    reason = stop_reason(stopper, settings, epochs_run)
    log.info("training stopped after %d epoch(s): %s", epochs_run, reason)

    in_float32(net, settings.architecture).save(model_dir / "model.keras")
    (model_dir / "history.json").write_text(json.dumps({k: [float(v) for v in vs] for k, vs in history.items()}, indent=2))
    record = {
        "preset": preset,
        "settings": {k: v for k, v in dataclasses.asdict(settings).items()},
        "seed": seed,
        "strategy": strategy,
        "replicas": distribution.num_replicas_in_sync,
        "policy": net.dtype_policy.name,  # what `precision` came to on this machine
        "worker": role,
        "shuffle_buffer": shuffle_buffer,
        "steps_per_epoch": steps_per_epoch,
        "steps_per_execution": per_call,
        "epochs_run": epochs_run,
        "stop_reason": reason,
        "train_seconds": round(train_seconds, 2),
        "train_cpu_seconds": round(train_cpu_seconds, 2),
        "train_examples": train_examples,
        "epoch_timings": epoch_log.timings,
        "resumed_after_epoch": resumed_at,
        "final_metrics": {k: float(vs[-1]) for k, vs in history.items()},
    }
    (model_dir / "training.json").write_text(json.dumps(record, indent=2))
    return record


def _backup(backup_dir: Path | None, role: dict) -> Backup | None:
    """The per-epoch backup in `backup_dir` (each worker of a multi-worker training in its own folder), if any."""
    if not backup_dir:
        return None
    if role["task"]:
        backup_dir = Path(backup_dir) / role["task"].replace(":", "-")
    backup = Backup(backup_dir)
    if backup.resumed_at:
        log.info("resuming training after epoch %d from the backup in %s", backup.resumed_at, backup_dir)
    return backup


def _log_devices(strategy: str, distribution, role: dict) -> None:
    # TensorFlow's own device lines are kept off the console (pipeline/console.py): say it here.
    gpus = tf.config.list_logical_devices("GPU")
    log.info("training on %s, strategy %s with %d replica(s)%s", ", ".join(d.name for d in gpus) if gpus
             else "the CPU (no GPU found)", strategy, distribution.num_replicas_in_sync,
             f", as {role['task']} of {role['workers']} workers" if role["task"] else "")
