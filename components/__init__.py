"""Pipeline steps, one module each (ingest, preprocess, train, evaluate, export),
and the pieces they share: `transform` (the one scaling), `presets` (models by name,
Keras-free) and `models` (their architectures), `serving` (the TF Serving directory
layout), `digits` (user images to MNIST form)."""
