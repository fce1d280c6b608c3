"""The pipeline's steps, one module each, and the pieces they use, grouped by who uses them:

    ingest.py preprocess.py validate.py train.py evaluate.py export.py   the steps of the graph
    infer.py                                                             batch scoring (`infer`)
    training/   the train step's pieces (presets, models, batch stream, callbacks, tf.distribute)
    serving/    the served versions (its __init__: TF Serving's layout, push, rollback) and
                export's pieces: servable (the loadability check), client, infra_validator,
                model_card and its templates
    common/     what several steps share: records, transform, digits, versions

Each piece is its own module so that a step's code fingerprint covers only the code it runs
(pipeline/fingerprint.py follows the imports)."""

import os

# TensorFlow turns its oneDNN kernels on by default only on some Intel CPUs; on the AMD
# EPYC machines this team trains on, turning them on cut a training step of `best` from
# 365 ms to 274 ms (benchmarks/train.py). Before any component imports TensorFlow; a
# value the user set wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
