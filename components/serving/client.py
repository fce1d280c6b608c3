"""A SavedModel called the way a serving client calls it: raw uint8 images in, the
`serving_default` signature's class probabilities out.

Evaluate (the served baseline), export (its own verification) and `pipeline predict`
(users' images) all go through here, so each of them tests what TF Serving would run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

BATCH_SIZE = 1000  # images per call to the signature


def serving_function(saved_model: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A SavedModel's serving signature as a function from raw uint8 images to class
    probabilities, called as a client would call it."""
    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    return lambda images: serve(images=tf.constant(images))["probabilities"].numpy()


def predict_saved_model(saved_model: Path, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Class probabilities from a served SavedModel fed raw uint8 images."""
    predict = serving_function(saved_model)
    return np.concatenate([predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
