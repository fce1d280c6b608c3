"""Model presets by name: each seed's network and training settings, and `best`, ours.

Kept free of Keras so that validating a configuration or listing presets costs no
TensorFlow import; `components.training.models.build(preset.architecture)` makes the network.
A preset's training settings are defaults; `train.*` configuration overrides them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Preset:
    architecture: str  # a function in components.training.models
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    stop: str  # threshold | early_stopping | none
    monitor: str = "accuracy"
    threshold: Optional[float] = None
    patience: Optional[int] = None
    one_hot_labels: bool = False  # categorical instead of sparse categorical cross-entropy
    schedule: str = "constant"  # constant | warmup_cosine | exponential (to a tenth of the rate by the last step)
    # Train on each batch cut in this many parts that run side by side through the one network
    # (components.training.models.SplitBatch); BatchNorm normalises each part by itself. Serving is unchanged.
    batch_splits: int = 1
    # Arithmetic in training: float32; mixed_bfloat16 (bfloat16 products, float32 weights and
    # probabilities); or auto, mixed_bfloat16 where the CPU has bfloat16 matrix tiles (Intel AMX)
    # and float32 elsewhere. What is saved and served computes in float32 either way.
    precision: str = "float32"


PRESETS: dict[str, Preset] = {
    # No early stopping: the cosine schedule fixes the length, and its best epochs are the
    # last ones, at a small learning rate. Early stopping (val_loss, patience 4) stopped a
    # full run at epoch 10 on a lucky epoch-6 val_loss, restoring a 99.23% model.
    # Two batch parts side by side keep the cores busier (one network on a whole batch left each
    # core waiting on the other after every kernel). 18 epochs scored as well as 22 on equal
    # batches (3 seeds each: 99.65% and 99.62% mean) in 18% less time (README, Models).
    # bfloat16 on an AMX Xeon: the same 99.66% mean over 3 seeds in 27% less time than float32.
    # The network's crop-zoom, erasing and standardisation input: 99.68% mean over 3 seeds on a
    # Zen 4, against 99.64% with random rotation, zoom and shift, at the same cost; without
    # dropout then: 99.72% mean, 99.71% min, in 3% less time (docs/experiments.md).
    "best": Preset(
        "best", epochs=18, batch_size=128, optimizer="adam", learning_rate=3e-3,
        stop="none", schedule="warmup_cosine", batch_splits=2, precision="auto",
    ),
    # After ttdoucet/mnist (10 networks: 99.74% mean in 11 epochs), narrowed to 2 cores: residual
    # blocks and global average pooling, no dropout, no weight decay, Adam at 4e-4 decayed
    # exponentially to 4e-5, batch 100; the fixed 25x25 crop-zoom and per-image standardisation
    # in the network. An experiment beside `best` (docs/experiments.md).
    "resnet": Preset(
        "resnet", epochs=11, batch_size=100, optimizer="adam", learning_rate=4e-4,
        stop="none", schedule="exponential", batch_splits=2, precision="auto",
    ),
    "seed-000": Preset(
        "seed_000", epochs=10, batch_size=32, optimizer="adam", learning_rate=1e-3,
        stop="threshold", monitor="accuracy", threshold=0.995,
    ),
    "seed-002": Preset(
        "seed_002", epochs=5, batch_size=64, optimizer="adam", learning_rate=1e-3,
        stop="none", one_hot_labels=True,
    ),
    "seed-003": Preset(
        "seed_003", epochs=10, batch_size=32, optimizer="rmsprop", learning_rate=1e-3,
        stop="threshold", monitor="accuracy", threshold=0.96,
    ),
    "seed-004": Preset(
        "seed_004", epochs=10, batch_size=128, optimizer="adam", learning_rate=1e-3,
        stop="early_stopping", monitor="val_loss", patience=3,
    ),
}


def resolve_settings(preset: str, **overrides) -> Preset:
    """The preset's settings with every non-None override applied; the configuration
    checks them before anything runs, and train runs with them."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    settings = dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    if settings.stop == "threshold" and settings.threshold is None:
        raise ValueError("train.stop=threshold needs train.threshold, e.g. --set train.threshold=0.995")
    if settings.stop == "early_stopping" and settings.patience is None:
        raise ValueError("train.stop=early_stopping needs train.patience, e.g. --set train.patience=3")
    return settings
