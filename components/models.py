"""The architectures behind the presets (`components.presets`): each seed's network, and `best`, ours.

Every architecture takes scaled (28, 28, 1) images and returns class probabilities.
"""
from __future__ import annotations

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


def build(architecture: str) -> keras.Model:
    """A fresh, uncompiled model of the named architecture (a preset's `architecture`)."""
    return ARCHITECTURES[architecture]()


ARCHITECTURES = {f.__name__: f for f in (best, seed_000, seed_002, seed_003, seed_004)}
