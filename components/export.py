"""Export: the trained model as a SavedModel for serving, pushed only when blessed.

Serving signature `serving_default`:
  input  `images`: uint8 (N, 28, 28), raw pixels, 0 = background;
  output `probabilities`: float32 (N, 10); `classes`: int64 (N,).
The scaling is `transform.scale_pixels`, inside the graph. After writing, the
SavedModel is reloaded and must reproduce the Keras model's predictions on test
images. Output (`exported/`): `saved_model/` and `export.json` (verification, and
whether and as which version it was pushed, or why not).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from components import serving
from components.client import predict_saved_model
from components.records import iter_examples
from components.transform import scale_pixels

log = logging.getLogger(__name__)
TOLERANCE = 1e-5  # float32 graph vs eager: anything above this is a real difference


def build_saved_model(net: keras.Model, path: Path) -> None:
    archive = keras.export.ExportArchive()
    archive.track(net)

    @tf.autograph.experimental.do_not_convert  # plain TF ops; autograph would leave a temp file if killed
    def serve(images):
        probabilities = net(scale_pixels(images), training=False)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")])
    archive.write_out(str(path), verbose=False)


def export(
    model: Path,
    evaluation: Path,
    examples: Path,
    exported: Path,
    *,
    serving_root: Path | None = None,
    model_name: str = "mnist",
    verify_examples: int = 256,
    push_record: dict | None = None,
) -> dict:
    """Write `exported/saved_model`, verify it, and push it under `serving_root/model_name` if blessed."""
    blessing_path = Path(evaluation) / "blessing.json"
    if not blessing_path.is_file():
        raise FileNotFoundError(f"no blessing.json in {evaluation}; run evaluate first")
    blessing = json.loads(blessing_path.read_text())

    net = keras.models.load_model(Path(model) / "model.keras")
    saved_model = Path(exported) / "saved_model"
    build_saved_model(net, saved_model)

    images, _ = next(iter_examples(examples, "test", verify_examples))  # the first batch only
    expected = net.predict(scale_pixels(images), verbose=0)
    served = predict_saved_model(saved_model, images)
    max_diff = float(np.abs(expected - served).max())
    if max_diff > TOLERANCE or (expected.argmax(1) != served.argmax(1)).any():
        raise RuntimeError(f"reloaded SavedModel disagrees with the trained model (max |diff| {max_diff:.2e}); not exported")

    record = {
        "saved_model": saved_model.name,  # relative: the artifact is renamed into place after this
        "verified": {"examples": len(images), "max_abs_diff": max_diff},
        "blessed": blessing["blessed"],
        "pushed": False,
    }
    if not blessing["blessed"]:
        record["not_pushed_because"] = blessing["reasons"]
        log.warning("model not pushed: %s", "; ".join(blessing["reasons"]))
    elif serving_root:
        model_base = Path(serving_root) / model_name
        try:
            version = serving.push(
                saved_model, model_base,
                {**(push_record or {}), "model_name": model_name, "test_accuracy": blessing["candidate"]["accuracy"]},
                judged_against=blessing.get("judged_against"),
            )
        except serving.AlreadyServed as served:  # a re-run, or a push whose run was killed before its export was saved
            record["already_served"] = served.version
            log.info("not pushed: %s", served)
        except serving.StaleBlessing as stale:  # another run pushed since this one was evaluated
            record["not_pushed_because"] = [str(stale)]
            log.warning("model not pushed: %s", stale)
        else:
            record.update(pushed=True, version=version, serving_dir=str(model_base / str(version)))
            log.info("pushed version %d to %s", version, model_base)
    (Path(exported) / "export.json").write_text(json.dumps(record, indent=2))
    return record

