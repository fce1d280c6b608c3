import json

import keras
import numpy as np
import tensorflow as tf

from conftest import small_overrides

from components.common.records import read_examples


def test_saved_model_serves_raw_uint8_with_the_evaluated_accuracy(full_run):
    root, run_dir, _ = full_run
    _assert_serves_the_test_slice(root, run_dir)


def test_the_default_model_exports_and_serves_with_the_same_signature(tmp_path, tfds_dir):
    """`best` through the pipeline: two short epochs on the slice, blessed whatever it scores,
    since what is checked here is the serving (a change to `best` is measured by bench-accuracy)."""
    from pipeline.config import load_config
    from pipeline.runner import run

    root = tmp_path / "artifacts"
    run_dir = run(load_config(small_overrides(tfds_dir, **{"train.preset": "best", "train.epochs": 2,
                                                                 "evaluate.min_accuracy": 0.0})), root)
    assert keras.models.load_model(run_dir / "train" / "model.keras").name == "best"
    _assert_serves_the_test_slice(root, run_dir)
    assert json.loads((run_dir / "export" / "infra_validation.json").read_text())["passed"] is True


def _assert_serves_the_test_slice(root, run_dir):
    """The pushed SavedModel has the one signature clients know, and its answers on the test
    slice are the ones evaluate scored."""
    saved_model = run_dir / "export" / "saved_model"
    signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    [spec] = signature.structured_input_signature[1].values()
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 28, 28]
    outputs = signature.structured_outputs
    assert set(outputs) == {"probabilities", "classes"}
    assert (outputs["probabilities"].dtype, outputs["probabilities"].shape.as_list()) == (tf.float32, [None, 10])
    assert (outputs["classes"].dtype, outputs["classes"].shape.as_list()) == (tf.int64, [None])

    images, labels = read_examples(run_dir / "ingest", "test")
    out = signature(images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out["classes"].numpy(), out["probabilities"].numpy().argmax(axis=1))
    accuracy = float((out["classes"].numpy() == labels).mean())
    assert accuracy == json.loads((run_dir / "evaluate" / "metrics.json").read_text())["accuracy"]

    record = json.loads((run_dir / "export" / "export.json").read_text())
    assert record["verified"]["examples"] == 64 and record["verified"]["max_abs_diff"] < 1e-5
    assert record["pushed"] is True and record["version"] == 1
    served = root / "serving" / "mnist" / "1"
    assert (served / "saved_model.pb").is_file()
    assert json.loads((served / "assets.extra" / "push.json").read_text())["run"] == run_dir.name


def test_serving_docs_python_example_runs_against_a_served_model(full_run, capsys):
    from conftest import REPO

    serving_docs = (REPO / "docs" / "serving.md").read_text()
    snippet = serving_docs.split("From Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    served = full_run[0] / "serving" / "mnist" / "1"
    namespace = {}
    exec(snippet.replace("artifacts/serving/mnist/1", str(served)), namespace)
    assert namespace["out"]["classes"].shape == (1,) and namespace["out"]["probabilities"].shape == (1, 10)
    assert capsys.readouterr().out.startswith("[")
