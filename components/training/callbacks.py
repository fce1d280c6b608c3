"""The Keras callbacks training runs with: when to stop and why, per-epoch logging and
timings, the terminal's progress bar, and the per-epoch backup a killed training resumes from.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import keras

from components.training.presets import Preset

log = logging.getLogger(__name__)
CORES = len(os.sched_getaffinity(0))


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


def stop_callback(settings: Preset) -> keras.callbacks.Callback | None:
    """The callback that ends training early, as the settings ask; None runs every epoch."""
    if settings.stop == "threshold":
        return StopAtThreshold(settings.monitor, settings.threshold)
    if settings.stop == "early_stopping":
        return keras.callbacks.EarlyStopping(monitor=settings.monitor, patience=settings.patience, restore_best_weights=True)
    return None


def stop_reason(stopper, settings: Preset, epochs_run: int) -> str:
    """Why training ended, for training.json and the log: `stopper`'s doing, or the epoch cap."""
    if isinstance(stopper, StopAtThreshold) and stopper.reason:
        return f"threshold: {stopper.reason}"
    if isinstance(stopper, keras.callbacks.EarlyStopping) and stopper.stopped_epoch > 0:
        return (
            f"early stopping: {settings.monitor} did not improve for {settings.patience} epoch(s); "
            f"restored the weights of epoch {stopper.best_epoch + 1}"
        )
    return f"epoch cap: ran all {epochs_run} of {settings.epochs} epoch(s)"


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
        # Keras calls this once per call of its step function, with the call's last step.
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items()}, refresh=False)
        self.bar.update(batch + 1 - self.bar.n)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()  # before EpochLog's line, so the two never share a terminal line


class Backup(keras.callbacks.BackupAndRestore):
    """Keras' per-epoch backup (weights, optimizer state, epoch), plus the metrics and
    timings of the epochs already run, so a resumed training reports all of them.

    Keras writes its weights file and then its metadata in place: a full disk or a kill
    mid-write left a truncated weights file that the next start loaded without a word, so
    the same fingerprint trained another model. Here each epoch's pair is written into a
    scratch folder and committed by renames: `epoch/` always holds a whole epoch, or none.
    """

    COMMITTED, PREVIOUS, SAVING = "epoch", ".previous", ".saving"

    def __init__(self, backup_dir: Path):
        super().__init__(str(backup_dir))
        self.root = Path(backup_dir)
        committed, previous = self.root / self.COMMITTED, self.root / self.PREVIOUS
        if not committed.is_dir() and previous.is_dir():  # killed between the two renames of a commit
            os.rename(previous, committed)
        shutil.rmtree(self.root / self.SAVING, ignore_errors=True)  # a save that never finished
        self._weights_path = str(committed / "latest.weights.h5")
        self._training_metadata_path = str(committed / "training_metadata.json")
        self.done = self.root / "epochs_done.json"
        state = json.loads(self.done.read_text()) if self.done.is_file() else {}
        # The epoch to resume at: Keras' own record, since its weights are what gets restored.
        metadata = Path(self._training_metadata_path)
        self.resumed_at = json.loads(metadata.read_text())["epoch"] if metadata.is_file() else 0
        self.history = {k: v[: self.resumed_at] for k, v in state.get("history", {}).items()}
        self.timings = state.get("timings", [])[: self.resumed_at]

    def _save_model(self):
        saving, committed, previous = (self.root / n for n in (self.SAVING, self.COMMITTED, self.PREVIOUS))
        shutil.rmtree(saving, ignore_errors=True)
        saving.mkdir(parents=True)
        try:
            self.model.save_weights(str(saving / "latest.weights.h5"))
            (saving / "training_metadata.json").write_text(
                json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
        except BaseException:
            shutil.rmtree(saving, ignore_errors=True)  # on a full disk: the space back at once
            raise
        shutil.rmtree(previous, ignore_errors=True)
        if committed.is_dir():
            os.rename(committed, previous)
        os.rename(saving, committed)
        shutil.rmtree(previous, ignore_errors=True)

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
