"""The architectures behind the presets (`components.presets`): each seed's network, and `best`, ours;
and `compiled_model`, a preset's network compiled with its optimizer, schedule and loss.

Every architecture takes scaled (28, 28, 1) images and returns class probabilities.
"""
from __future__ import annotations

import keras
from keras import layers

from components.presets import Preset
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


def compiled_model(settings: Preset, steps_per_epoch: int) -> keras.Model:
    """A fresh network of the preset, compiled with its optimizer, schedule and loss."""
    net = build(settings.architecture)
    net.compile(
        optimizer=_optimizer(settings, steps_per_epoch),
        loss="categorical_crossentropy" if settings.one_hot_labels else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return net


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
