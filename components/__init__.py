"""Pipeline steps, one module each (ingest, preprocess, validate, train, evaluate, export),
and the pieces they share, each its own module so that a step's code fingerprint covers
only the code it runs: `records` (the TFRecord formats, their writers and readers),
`transform` (the one scaling), `presets` (models by name, Keras-free) and `models` (their
architectures, compiled), `training_data` (training's batch stream), `callbacks` (training's
Keras callbacks), `distribute` (tf.distribute strategies by name, and the Keras patch they
need), `client` (a SavedModel called as a serving client calls it), `serving` (the TF
Serving directory layout), `infra_validator` (what will be pushed, loaded and called by a
clean process), `model_card` (the card each served version carries), `digits` (user images
to MNIST form)."""

import os

# TensorFlow turns its oneDNN kernels on by default only on some Intel CPUs; on the AMD
# EPYC machines this team trains on, turning them on cut a training step of `best` from
# 365 ms to 274 ms (benchmarks/train.py). Before any component imports TensorFlow; a
# value the user set wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
