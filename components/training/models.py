"""The architectures behind the presets (`components.training.presets`): each seed's network, and `best`
and `resnet`, ours;
and `compiled_model`, a preset's network compiled with its optimizer, schedule and loss, wrapped
in `SplitBatch` for training when the preset cuts each batch in parts (`batch_splits`).

Every architecture takes scaled (28, 28, 1) images and returns class probabilities.
"""
from __future__ import annotations

import math
from pathlib import Path

import keras
import tensorflow as tf
from keras import layers

from components.common.transform import IMAGE_SHAPE, NUM_CLASSES
from components.training.presets import Preset


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


def affine(images, angle, zoom, shift_x, shift_y):
    """`images` (N, H, W, C), each rotated by `angle` (radians) and zoomed about its centre, then
    shifted by (`shift_x`, `shift_y`) pixels, in one bilinear resampling (zero outside): each output
    pixel reads the input at centre + zoom * R(angle) * (pixel - centre - shift)."""
    ops = keras.ops
    cos, sin = ops.cos(angle) * zoom, ops.sin(angle) * zoom
    cx, cy = (images.shape[2] - 1) / 2, (images.shape[1] - 1) / 2
    x0, y0 = cx + shift_x, cy + shift_y  # the output point that reads the input's centre
    zeros = ops.zeros_like(cos)
    rows = ops.stack([cos, -sin, cx - cos * x0 + sin * y0, sin, cos, cy - sin * x0 - cos * y0, zeros, zeros], axis=-1)
    return ops.image.affine_transform(images, rows, interpolation="bilinear", fill_mode="constant")


CROP = 25  # the centred crop every image is zoomed from, in training and serving (ttdoucet/mnist)


def crop_zoom(images, angle=0.0, shift_x=0.0, shift_y=0.0):
    """The centred CROP x CROP square of each image, zoomed to the whole frame: the one operation
    `CropZoom` applies in training (rotated and moved by the amounts drawn for each image) and
    in serving (as it stands: no rotation, no shift)."""
    return affine(images, angle, CROP / images.shape[1], shift_x, shift_y)


@keras.saving.register_keras_serializable(package="mnist")
class CropZoom(layers.Layer):
    """`crop_zoom` in the model, so the SavedModel zooms raw digits as training did. In training
    each image's crop is also rotated up to `rotation` (a fraction of a full turn) and moved up
    to `shift` pixels, one resampling for all of it."""

    def __init__(self, rotation: float, shift: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.shift, self.seed = rotation, shift, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # As Keras' own: ImageProjectiveTransformV3 has no XLA kernel, so Keras must not pick XLA
        # for the model on a GPU (jit_compile="auto"); the CPU never uses it.
        self.supports_jit = False

    def call(self, images, training=False):
        if not training:
            return crop_zoom(images)
        count = keras.ops.shape(images)[0]

        def draw(limit):
            return keras.random.uniform((count,), -limit, limit, seed=self.seed_generator)

        return crop_zoom(images, draw(self.rotation) * 2 * math.pi, draw(self.shift), draw(self.shift))

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "shift": self.shift, "seed": self.seed}


@keras.saving.register_keras_serializable(package="mnist")
class RandomErasing(layers.Layer):
    """In training, a `size` x `size` square of each image, at a place drawn for it, set to the
    background (Zhong et al. 2017; Byerly et al. 2020 on MNIST). Outside training: unchanged."""

    def __init__(self, size: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.size, self.seed = size, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        if not training:
            return images
        ops = keras.ops
        count, (height, width) = ops.shape(images)[0], images.shape[1:3]
        top = keras.random.randint((count, 1, 1, 1), 0, height - self.size + 1, seed=self.seed_generator)
        left = keras.random.randint((count, 1, 1, 1), 0, width - self.size + 1, seed=self.seed_generator)
        rows = ops.reshape(ops.arange(height), (1, height, 1, 1))
        cols = ops.reshape(ops.arange(width), (1, 1, width, 1))
        inside = (rows >= top) & (rows < top + self.size) & (cols >= left) & (cols < left + self.size)
        return ops.where(inside, ops.zeros_like(images), images)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "seed": self.seed}


@keras.saving.register_keras_serializable(package="mnist")
class PerImageStandardization(layers.Layer):
    """Each image to mean 0 and standard deviation 1, as tf.image.per_image_standardization: in
    the model, so serving standardises exactly as training did and the signature stays uint8."""

    def call(self, images):
        ops = keras.ops
        mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
        std = ops.std(images, axis=(1, 2, 3), keepdims=True)
        pixels = math.prod(images.shape[1:])
        return (images - mean) / ops.maximum(std, 1 / math.sqrt(pixels))


def _conv_bn_relu(x, filters: int, kernel: int, strides: int = 1, padding: str = "valid"):
    # best: a strided 5x5 convolution stands in for max pooling (the network learns how to downsample).
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same" if strides > 1 else padding, use_bias=False)(x)
    return layers.ReLU()(layers.BatchNormalization()(x))


def best() -> keras.Model:
    """Ours: BatchNorm CNN with learned downsampling, after the best single models on the
    Kaggle digit recognizer but without their dropout; in front of it, inside the model so
    serving does the same, the fixed crop-zoom and per-image standardisation, and in training
    only the crop's rotation and shift and random erasing."""
    inputs = keras.Input(IMAGE_SHAPE)
    x = CropZoom(rotation=0.03, shift=2.8)(inputs)  # up to ~11 degrees and 2.8 pixels
    x = RandomErasing(size=4)(x)
    x = PerImageStandardization()(x)
    for filters in (32, 64):
        x = _conv_bn_relu(x, filters, 3)
        x = _conv_bn_relu(x, filters, 3)
        x = _conv_bn_relu(x, filters, 5, strides=2)
    x = _conv_bn_relu(x, 128, 4)
    x = layers.Flatten()(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="best")


def _residual(x, filters: int):
    shortcut = x
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)))
    x = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(x))
    return layers.ReLU()(layers.Add()([shortcut, x]))


def resnet() -> keras.Model:
    """After ttdoucet/mnist, narrowed to the CPU budget: residual blocks, global average pooling,
    no dropout; the fixed crop-zoom and per-image standardisation in the model."""
    inputs = keras.Input(IMAGE_SHAPE)
    x = CropZoom(rotation=10 / 360, shift=1.5)(inputs)  # up to 10 degrees; the 25x25 crop anywhere it fits
    x = RandomErasing(size=4)(x)
    x = PerImageStandardization()(x)
    x = _conv_bn_relu(x, 32, 3, padding="same")
    for filters in (64, 128):
        x = layers.MaxPooling2D(2)(x)
        x = _conv_bn_relu(x, filters, 3, padding="same")
        x = _residual(x, filters)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="resnet")


def load(model: Path) -> keras.Model:
    """The network a train step saved in `model` (its `model.keras`)."""
    return keras.models.load_model(Path(model) / "model.keras")  # its layers are registered above


def build(architecture: str, policy: str = "float32") -> keras.Model:
    """A fresh, uncompiled model of the named architecture (a preset's `architecture`), computing
    under the Keras dtype `policy` (`training_policy`); its probabilities always in float32."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        net = ARCHITECTURES[architecture]()
    finally:
        keras.config.set_dtype_policy(previous)
    # bfloat16 keeps 8 bits of mantissa: a probability of 0.999 would round to 1, and the loss's
    # gradient (p - label) with it, just where training ends.
    net.layers[-1].dtype_policy = "float32"
    return net


def training_policy(precision: str) -> str:
    """The Keras dtype policy a preset's `precision` trains under on this machine: `auto` is
    mixed_bfloat16 where the CPU multiplies bfloat16 in matrix tiles (Intel AMX), else float32."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if "amx_bf16" in cpu_flags() else "float32"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where it does not)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return {flag for line in lines if line.startswith("flags") for flag in line.partition(":")[2].split()}


def in_float32(net: keras.Model, architecture: str) -> keras.Model:
    """`net` computing in float32: what is saved and served, whichever precision trained it (its
    weights are float32 under a mixed policy too)."""
    if net.dtype_policy.name == "float32":
        return net
    served = build(architecture)
    served.set_weights(net.get_weights())
    return served


ARCHITECTURES = {f.__name__: f for f in (best, resnet, seed_000, seed_002, seed_003, seed_004)}


class SplitBatch(keras.Model):
    """Runs `network` on each batch cut in `parts` parts side by side, in fitting and validation.

    One network on one batch splits every kernel over both cores, and the core done first
    waits for the other before the next kernel (profiled: 87-88% of two cores busy). Parts
    have no kernel in common until the loss, so TensorFlow runs one part's kernel while the
    other's finishes (93%), and with one core per kernel (`distribute.split_threads`) each part
    keeps its own core (97%). In training, BatchNorm normalises each part by itself; in
    inference the parts give exactly the whole batch's answers. The weights are the network's:
    saving and serving use `network`. A batch with fewer images than parts (a split smaller
    than that) would leave a part empty, and BatchNorm has no statistics of nothing: such a
    part runs on the batch's last image and its answer is dropped (in training its BatchNorm
    statistics still move, as for a batch of one). No branch on the batch size: one network
    graph per part is all the first step traces (a `tf.cond` with a whole-batch branch traced
    a third copy: the first step took 10 s of one core, 4-6 s without it).
    """

    def __init__(self, network: keras.Model, parts: int):
        super().__init__(name=f"{network.name}_split_batch")
        self.network, self.parts = network, parts
        self.built = network.built  # its only weights are the network's (BackupAndRestore needs it built)

    def call(self, images, training=False):
        n = tf.shape(images)[0]
        sizes = n // self.parts + tf.cast(tf.range(self.parts) < n % self.parts, tf.int32)
        starts = tf.cumsum(sizes, exclusive=True)
        answers = []
        for part in range(self.parts):
            rows = tf.minimum(starts[part] + tf.range(tf.maximum(sizes[part], 1)), n - 1)
            answers.append(self.network(tf.gather(images, rows), training=training)[: sizes[part]])
        return tf.concat(answers, 0)


def compiled_model(settings: Preset, steps_per_epoch: int, steps_per_execution: int = 1
                   ) -> tuple[keras.Model, keras.Model]:
    """A fresh network of the preset, and the model to fit: the network, or a SplitBatch of it
    (`batch_splits`), compiled with the preset's optimizer, schedule and loss, to run
    `steps_per_execution` steps per call (which must divide every epoch's steps)."""
    net = build(settings.architecture, training_policy(settings.precision))
    trainer = SplitBatch(net, settings.batch_splits) if settings.batch_splits > 1 else net
    trainer.compile(
        optimizer=_optimizer(settings, steps_per_epoch),
        loss="categorical_crossentropy" if settings.one_hot_labels else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return net, trainer


def _optimizer(settings: Preset, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = settings.learning_rate
    if settings.schedule == "warmup_cosine":
        # One linear warm-up epoch from lr/30, then cosine decay to zero at the last epoch.
        total = settings.epochs * steps_per_epoch
        lr = keras.optimizers.schedules.CosineDecay(
            lr / 30, decay_steps=max(total - steps_per_epoch, 1), warmup_target=lr, warmup_steps=steps_per_epoch
        )
    elif settings.schedule == "exponential":
        lr = keras.optimizers.schedules.ExponentialDecay(lr, settings.epochs * steps_per_epoch, decay_rate=0.1)
    return {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD}[
        settings.optimizer
    ](learning_rate=lr)
