"""Pipeline steps, one module each (ingest, preprocess, train, evaluate, export),
and the pieces they share: `transform` (the one scaling), `presets` (models by name,
Keras-free) and `models` (their architectures), `serving` (the TF Serving directory
layout), `digits` (user images to MNIST form), `distribute` (tf.distribute strategies by name)."""

import os

# TensorFlow turns its oneDNN kernels on by default only on some Intel CPUs; on the AMD
# EPYC machines this team trains on, turning them on cut a training step of `best` from
# 365 ms to 274 ms (benchmarks/train.py). Before any component imports TensorFlow; a
# value the user set wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
