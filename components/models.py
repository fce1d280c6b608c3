"""Model presets: each seed's network by name, and `best`, ours.

Every architecture takes scaled (28, 28, 1) images and returns class probabilities.
A preset's training settings are defaults; `train.*` configuration overrides them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import keras
from keras import layers

from components.transform import IMAGE_SHAPE, NUM_CLASSES


def seed_000() -> keras.Model:
    """Seeds 000 and 001: one convolution, one dense layer."""
    return keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="seed_000",
    )


def seed_002() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="seed_002",
    )


def seed_003() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(128, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(128, activation="relu"),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="seed_003",
    )


def seed_004() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.BatchNormalization(),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            layers.Dropout(0.3),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.3),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="seed_004",
    )


def _conv_bn_relu(x, filters: int, kernel: int, strides: int = 1):
    # A strided 5x5 convolution stands in for max pooling: the network learns how to downsample.
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same" if strides > 1 else "valid", use_bias=False)(x)
    return layers.ReLU()(layers.BatchNormalization()(x))


def best() -> keras.Model:
    """Ours: BatchNorm CNN with learned downsampling and dropout, after the best single
    models on the Kaggle digit recognizer, with augmentation inside the model (active
    only in training, so serving sees raw digits)."""
    inputs = keras.Input(IMAGE_SHAPE)
    x = layers.RandomRotation(0.03, fill_mode="constant")(inputs)  # about +-10 degrees
    x = layers.RandomZoom(0.1, fill_mode="constant")(x)
    x = layers.RandomTranslation(0.1, 0.1, fill_mode="constant")(x)
    for filters in (32, 64):
        x = _conv_bn_relu(x, filters, 3)
        x = _conv_bn_relu(x, filters, 3)
        x = _conv_bn_relu(x, filters, 5, strides=2)
        x = layers.Dropout(0.4)(x)
    x = _conv_bn_relu(x, 128, 4)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.4)(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="best")


@dataclass(frozen=True)
class Preset:
    build: Callable[[], keras.Model]
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    stop: str  # threshold | early_stopping | none
    monitor: str = "accuracy"
    threshold: Optional[float] = None
    patience: Optional[int] = None
    one_hot_labels: bool = False  # categorical instead of sparse categorical cross-entropy
    schedule: str = "constant"  # constant | warmup_cosine


PRESETS: dict[str, Preset] = {
    "best": Preset(
        best, epochs=18, batch_size=128, optimizer="adam", learning_rate=3e-3,
        stop="early_stopping", monitor="val_loss", patience=4, schedule="warmup_cosine",
    ),
    "seed-000": Preset(
        seed_000, epochs=10, batch_size=32, optimizer="adam", learning_rate=1e-3,
        stop="threshold", monitor="accuracy", threshold=0.995,
    ),
    "seed-002": Preset(
        seed_002, epochs=5, batch_size=64, optimizer="adam", learning_rate=1e-3,
        stop="none", one_hot_labels=True,
    ),
    "seed-003": Preset(
        seed_003, epochs=10, batch_size=32, optimizer="rmsprop", learning_rate=1e-3,
        stop="threshold", monitor="accuracy", threshold=0.96,
    ),
    "seed-004": Preset(
        seed_004, epochs=10, batch_size=128, optimizer="adam", learning_rate=1e-3,
        stop="early_stopping", monitor="val_loss", patience=3,
    ),
}
