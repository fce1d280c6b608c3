"""The one definition of the model's input transformation.

Preprocess (inside Beam), evaluate and the exported serving graph all call
`scale_pixels`, so training and serving cannot drift apart.
"""
import tensorflow as tf

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
# A multiplication, not a division: graph optimisation rewrites x / 255 as x * (1 / 255),
# which differs from eager division in the last bit; multiplying gives both the same floats.
PIXEL_SCALE = 1.0 / 255.0


def scale_pixels(images):
    """uint8 pixels of any leading shape -> float32 in [0, 1] shaped (N, 28, 28, 1)."""
    return tf.reshape(tf.cast(images, tf.float32) * PIXEL_SCALE, (-1, *IMAGE_SHAPE))
