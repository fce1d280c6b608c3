"""The `tf.distribute` strategy that training runs under, by name (`train.strategy`).

- `default`: TensorFlow's default strategy (one device: the CPU, or the first GPU).
- `mirrored`: `MirroredStrategy`, one replica per local GPU (the CPU alone when none).
- `multi_worker`: `MultiWorkerMirroredStrategy` across the machines `TF_CONFIG` names;
  every worker runs the train component, and only the chief goes on to evaluate and push.

TF_CONFIG is read here without importing TensorFlow, so the runner can check a worker's
role before anything heavy loads.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os

STRATEGIES = ("default", "mirrored", "multi_worker")
PATCHED_KERAS = "3.15"  # the series whose private trainer `fit_patch` is written against
RUN_WORKER = "python -m pipeline run train --set train.strategy=multi_worker"


def cluster_task() -> tuple[dict, dict]:
    """(cluster, task) from TF_CONFIG, or a one-line error naming what is missing."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError('train.strategy=multi_worker needs TF_CONFIG on every worker, e.g. TF_CONFIG=\'{"cluster": '
                         '{"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}\'')
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task["index"])
        hosts = cluster[task_type]
        if not 0 <= index < len(hosts):
            raise ValueError(f"task index {index} is not in cluster.{task_type}")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"TF_CONFIG is not a cluster with this task in it ({err}); see "
                         f"https://www.tensorflow.org/guide/distributed_training#TF_CONFIG") from None
    return cluster, {"type": task_type, "index": index}


def is_chief(cluster: dict, task: dict) -> bool:
    """The chief task if the cluster has one, else worker 0: the worker that evaluates and pushes."""
    if "chief" in cluster:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def worker(strategy_name: str) -> dict:
    """This process's place in the training cluster, as training.json records it."""
    if strategy_name != "multi_worker":
        return {"workers": 1, "task": None, "chief": True}
    cluster, task = cluster_task()
    return {"workers": sum(len(cluster.get(t, ())) for t in ("chief", "worker")),
            "task": f"{task['type']}:{task['index']}", "chief": is_chief(cluster, task)}


def split_threads(parts: int) -> None:
    """Sizes TensorFlow's thread pools for batches cut in `parts` that run side by side
    (`models.SplitBatch`, a preset's `batch_splits`): one inter-op thread per part, and the
    cores shared out among the parts within each kernel.

    By default every kernel is spread over all cores, so the two parts' kernels took turns
    on both cores and each waited for the slower core (bare fit of `best`, 2-core AMX Xeon:
    2,250 img/s at 94% busy; one core per part: 2,750 img/s at 97%). TensorFlow reads these
    variables once, when it starts: the runner sets them before any step, and values already
    in the environment win. Nothing changes for one part, or for fewer cores than parts.
    """
    cores = len(os.sched_getaffinity(0))
    if parts < 2 or cores < parts:
        return
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(parts))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(cores // parts))


@functools.cache
def strategy(name: str):
    """The strategy called `name`, made once per process.

    MultiWorkerMirroredStrategy configures TensorFlow's collective ops, which is only
    possible before TensorFlow runs its first operation: the runner makes it before any
    step, and a component run from a script must make it first thing.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown train.strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "multi_worker":
        cluster_task()  # a clear error before TensorFlow's own
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as err:  # "Collective ops must be configured at program startup"
        raise RuntimeError(f"train.strategy=multi_worker must be set up before TensorFlow runs anything ({err}); "
                           f"make components.training.distribute.strategy('multi_worker') first") from None


@contextlib.contextmanager
def fit_patch(net, dataset, distribution):
    """Lets Keras 3.15's `fit` run under a multi-worker strategy (keras-team/keras#20585),
    for the `fit` called inside this block only.

    Keras 3.15 builds a model at the start of `fit` from a first batch it draws from the
    training iterator and averages across replicas; MultiWorkerMirroredStrategy cannot
    average that (x, y) tuple, and under any strategy the drawn batch is lost to training.
    The model is built here from the dataset's element spec instead. And Keras averages
    each step's scalar metrics across workers along an axis 0 they do not have; they are
    averaged as scalars. Both reach into Keras' private trainer, so the block refuses any
    other Keras series than the one this was written against, and puts both back on the
    way out, however the block ends. Under the default strategy it does nothing, on any Keras.
    """
    import keras
    import tensorflow as tf

    if distribution is tf.distribute.get_strategy():  # the default strategy: Keras needs no help
        yield
        return
    if not keras.__version__.startswith(f"{PATCHED_KERAS}."):
        raise RuntimeError(f"train.strategy mirrored and multi_worker patch the fit of Keras {PATCHED_KERAS} "
                           f"(keras-team/keras#20585), and Keras {keras.__version__} is installed; install "
                           f"Keras {PATCHED_KERAS}.x, as pyproject.toml pins it, or set train.strategy=default")
    from keras.src.backend.tensorflow import trainer

    spec = keras.tree.map_structure(lambda s: keras.KerasTensor(s.shape, s.dtype.name), dataset.element_spec)
    with distribution.scope():
        net._symbolic_build(data_batch=spec)
    keras_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, distribution, reduction="auto"):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(distribution):
            return keras.tree.map_structure(lambda v: distribution.reduce("MEAN", v, axis=None), values)
        return keras_reduce(values, distribution, reduction)

    net._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        trainer.reduce_per_replica = keras_reduce
        del net._maybe_symbolic_build  # Keras' own method again
