"""Training under tf.distribute: two local workers (TF_CONFIG on 127.0.0.1) train one model, and the chief ships it."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, small_overrides

MULTI_WORKER = {"train.strategy": "multi_worker", "train.epochs": 1,
                # The 1-epoch model may trail the 2-epoch one served by full_run: bless it anyway, to see it pushed.
                "evaluate.accuracy_tolerance": 1.0, "evaluate.max_recall_drop": 1.0}


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def test_two_workers_train_one_model_and_the_chief_pushes_it(tmp_path, full_run, tfds_dir):
    from components.common.records import read_examples
    from components.serving.client import predict_saved_model
    from pipeline.store import ArtifactStore

    root, default_run, _ = full_run
    chief_root, worker_root = tmp_path / "chief", tmp_path / "worker"
    for copy in (chief_root, worker_root):  # each worker's own artifacts, as on two machines
        shutil.copytree(root, copy)
    served_before = sorted(p.name for p in (chief_root / "serving" / "mnist").iterdir())
    overrides = [a for kv in small_overrides(tfds_dir, **MULTI_WORKER) for a in ("--set", kv)]
    ports = _free_ports(2)
    commands = [  # the chief runs the pipeline; the other worker only trains
        [sys.executable, "-m", "pipeline", "--artifacts", str(chief_root), "run", *overrides],
        [sys.executable, "-m", "pipeline", "--artifacts", str(worker_root), "run", "train", *overrides],
    ]
    workers = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "TF_CONFIG": _tf_config(ports, index)})
               for index, command in enumerate(commands)]
    try:
        outputs = [w.communicate(timeout=420)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, output in zip(workers, outputs):
        assert w.returncode == 0, output[-3000:]

    chief, worker = ArtifactStore(chief_root).latest("train"), ArtifactStore(worker_root).latest("train")
    records = [json.loads((a.path / "training.json").read_text()) for a in (chief, worker)]
    assert [r["worker"] for r in records] == [{"workers": 2, "task": "worker:0", "chief": True},
                                              {"workers": 2, "task": "worker:1", "chief": False}]
    assert all(r["strategy"] == "multi_worker" and r["replicas"] == 2 and r["epochs_run"] == 1 for r in records)
    # One model: every step's gradients were averaged across both workers.
    import keras

    weights = [keras.models.load_model(a.path / "model.keras").get_weights() for a in (chief, worker)]
    assert all(np.allclose(c, w, atol=1e-6) for c, w in zip(*weights))
    trained = json.loads((default_run / "train" / "training.json").read_text())["final_metrics"]["loss"]
    assert records[0]["final_metrics"]["loss"] != trained  # trained here, not reused from the cache

    # Only the chief evaluated and pushed; what it pushed serves, with the default strategy's signature.
    assert not (ArtifactStore(worker_root).latest("train").path.parent / "export").exists()
    served = sorted(p.name for p in (chief_root / "serving" / "mnist").iterdir())
    new = [v for v in served if v not in served_before and v.isdigit()]
    assert len(new) == 1, served
    images, labels = read_examples(default_run / "ingest", "test")
    probabilities = predict_saved_model(chief_root / "serving" / "mnist" / new[0], images)
    assert probabilities.shape == (len(images), 10)
    assert (probabilities.argmax(1) == labels).mean() > 0.7
    import tensorflow as tf

    def signature(path):
        spec = tf.saved_model.load(str(path)).signatures["serving_default"]
        return spec.structured_input_signature, {k: (v.shape, v.dtype) for k, v in spec.structured_outputs.items()}

    assert signature(chief_root / "serving" / "mnist" / new[0]) == signature(root / "serving" / "mnist" / served_before[0])


def test_a_worker_that_is_not_the_chief_only_trains(full_run, tfds_dir, monkeypatch):
    from pipeline.config import load_config
    from pipeline.runner import run

    root = full_run[0]
    runs_before = sorted((root / "runs").iterdir())
    cfg = load_config(small_overrides(tfds_dir, **MULTI_WORKER))
    monkeypatch.setenv("TF_CONFIG", _tf_config(_free_ports(2), 1))
    with pytest.raises(ValueError, match=r"worker 1 of a multi-worker training.*chief runs evaluate, export.*"
                                         r"run train --set train.strategy=multi_worker"):
        run(cfg, root)
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="train.strategy=multi_worker needs TF_CONFIG on every worker"):
        run(cfg, root, ["train"])
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}')
    with pytest.raises(ValueError, match="TF_CONFIG is not a cluster with this task in it"):
        run(cfg, root, ["train"])
    assert sorted((root / "runs").iterdir()) == runs_before  # refused before any run began


def test_mirrored_on_one_device_trains_the_default_strategy_s_model(tmp_path, full_run):
    """One replica, so the same steps on the same batches: none lost to Keras' build at the start of fit."""
    import keras

    from components.train import train

    transformed = full_run[1] / "preprocess"
    default = train(transformed, tmp_path / "default", preset="seed-000", epochs=1, seed=5)
    mirrored = train(transformed, tmp_path / "mirrored", preset="seed-000", epochs=1, seed=5, strategy="mirrored")
    assert (mirrored["strategy"], mirrored["replicas"]) == ("mirrored", 1)
    assert mirrored["final_metrics"] == pytest.approx(default["final_metrics"], rel=1e-4)
    weights = [keras.models.load_model(tmp_path / name / "model.keras").get_weights() for name in ("default", "mirrored")]
    assert all(np.allclose(d, m, atol=1e-5) for d, m in zip(*weights))


def _tiny_fit_inputs(strategy_name: str):
    import keras
    import tensorflow as tf

    from components.training import distribute

    distribution = distribute.strategy(strategy_name)
    with distribution.scope():
        net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        net.compile(optimizer="sgd", loss="mse")
    dataset = tf.data.Dataset.from_tensor_slices((np.ones((8, 2), np.float32), np.ones((8, 1), np.float32))).batch(4)
    return net, dataset, distribution


def test_the_keras_patch_holds_for_the_fit_inside_it_only():
    from keras.src.backend.tensorflow import trainer

    from components.training import distribute

    keras_reduce = trainer.reduce_per_replica
    net, dataset, distribution = _tiny_fit_inputs("mirrored")
    with distribute.fit_patch(net, dataset, distribution):
        assert trainer.reduce_per_replica is not keras_reduce and "_maybe_symbolic_build" in vars(net)
        net.fit(dataset, epochs=1, verbose=0, shuffle=False)
    assert trainer.reduce_per_replica is keras_reduce
    assert "_maybe_symbolic_build" not in vars(net)  # Keras' own method again
    with pytest.raises(ZeroDivisionError):
        with distribute.fit_patch(net, dataset, distribution):
            1 / 0  # a fit that fails
    assert trainer.reduce_per_replica is keras_reduce and "_maybe_symbolic_build" not in vars(net)


def test_the_keras_patch_refuses_another_keras_series_and_the_default_strategy_needs_none(monkeypatch):
    import keras
    from keras.src.backend.tensorflow import trainer

    from components.training import distribute

    keras_reduce = trainer.reduce_per_replica
    monkeypatch.setattr(keras, "__version__", "3.16.0")
    net, dataset, distribution = _tiny_fit_inputs("mirrored")
    with pytest.raises(RuntimeError, match=r"keras-team/keras#20585.*Keras 3\.16\.0 is installed"):
        with distribute.fit_patch(net, dataset, distribution):
            pass
    net, dataset, distribution = _tiny_fit_inputs("default")
    with distribute.fit_patch(net, dataset, distribution):
        assert trainer.reduce_per_replica is keras_reduce
        net.fit(dataset, epochs=1, verbose=0, shuffle=False)
    assert trainer.reduce_per_replica is keras_reduce


def test_the_runner_gives_each_batch_part_its_own_cores_before_tensorflow_starts(monkeypatch):
    from components.training import distribute
    from pipeline.config import load_config
    from pipeline.graph import STEPS

    for name in ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert STEPS["train"].prepare(load_config(["train.preset=best"]), ["train"]) is False  # best: 2 parts
    assert (os.environ["TF_NUM_INTEROP_THREADS"], os.environ["TF_NUM_INTRAOP_THREADS"]) == ("2", "1")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")  # the environment's own value wins
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS")
    distribute.split_threads(2)
    assert (os.environ["TF_NUM_INTEROP_THREADS"], os.environ["TF_NUM_INTRAOP_THREADS"]) == ("2", "3")
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS")
    distribute.split_threads(2)
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "8"  # 16 cores, 8 per part

    for name in ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS"):
        monkeypatch.delenv(name)
    STEPS["train"].prepare(load_config(["train.preset=seed-004"]), ["train"])  # one part: TensorFlow's defaults
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    distribute.split_threads(2)  # one core: nothing to share out
    assert "TF_NUM_INTEROP_THREADS" not in os.environ and "TF_NUM_INTRAOP_THREADS" not in os.environ
