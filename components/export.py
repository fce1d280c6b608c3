"""Export: the trained model as a SavedModel for serving, pushed only when blessed.

Serving signature `serving_default`:
  input  `images`: uint8 (N, 28, 28), raw pixels, 0 = background;
  output `probabilities`: float32 (N, 10); `classes`: int64 (N,).
The scaling is `transform.scale_pixels`, inside the graph. After writing, the
SavedModel is reloaded and must reproduce the Keras model's predictions on test
images. Then TF Serving's warm-up requests and the model card go into its
`assets.extra/`, and a clean process that imports only TensorFlow loads that very folder,
the one the push copies, and answers canary requests (`infra_validator`). Output
(`exported/`): `saved_model/`, `infra_validation.json` and `export.json` (verification,
infra validation, and whether and as which version it was pushed, or why not). A model
is pushed only when it is blessed and passed infra validation.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from components import serving
from components.common.records import iter_examples
from components.common.transform import scale_pixels
from components.serving import infra_validator, model_card
from components.serving.client import predict_saved_model
from components.training import models

log = logging.getLogger(__name__)
TOLERANCE = 1e-5  # float32 graph vs eager: anything above this is a real difference
WARMUP_IMAGES = 4  # test images in TF Serving's warm-up file


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
    infra_load_timeout_s: float = 60.0,
    infra_tries: int = 3,
    infra_latency_requests: int = 100,
) -> dict:
    """Write `exported/saved_model`, verify it in this process and in a clean one, and push it
    under `serving_root/model_name` if it is blessed and passed."""
    blessing_path = Path(evaluation) / "blessing.json"
    if not blessing_path.is_file():
        raise FileNotFoundError(f"no blessing.json in {evaluation}; run evaluate first")
    blessing = json.loads(blessing_path.read_text())

    net = models.load(model)
    saved_model = Path(exported) / "saved_model"
    build_saved_model(net, saved_model)

    images, _ = next(iter_examples(examples, "test", verify_examples))  # the first batch only
    expected = net.predict(scale_pixels(images), verbose=0)
    served = predict_saved_model(saved_model, images)
    max_diff = float(np.abs(expected - served).max())
    if max_diff > TOLERANCE or (expected.argmax(1) != served.argmax(1)).any():
        raise RuntimeError(f"reloaded SavedModel disagrees with the trained model (max |diff| {max_diff:.2e}); not exported")

    # What a push copies is this folder as it is now: warm-up file and card included, validated last.
    infra_validator.write_warmup(saved_model, images[:WARMUP_IMAGES], model_name)
    model_card.write(saved_model / "assets.extra", model=model, evaluation=evaluation, examples=examples,
                     push_record=push_record or {}, model_name=model_name)
    infra = infra_validator.validate(
        saved_model, images, expected, load_timeout_s=infra_load_timeout_s, tries=infra_tries,
        batch_sizes=(1, len(images)), latency_requests=infra_latency_requests, tolerance=TOLERANCE,
        scratch=Path(exported) / ".infra-validation")
    infra["saved_model"] = saved_model.name  # relative, as in export.json: the output is renamed into place
    (Path(exported) / "infra_validation.json").write_text(json.dumps(infra, indent=2))
    infra = infra_validator.summary(infra)
    if infra["passed"]:
        log.info("infra validation passed: loaded in a clean process in %.2fs, batch-1 latency p50 %.2f ms, "
                 "p99 %.2f ms", infra["load_seconds"], infra["latency_ms"]["p50"], infra["latency_ms"]["p99"])
    else:
        log.warning("%s: %s", infra_validator.REFUSED, infra["reason"])

    record = {
        "saved_model": saved_model.name,  # relative: the artifact is renamed into place after this
        "verified": {"examples": len(images), "max_abs_diff": max_diff},
        "infra_validation": infra,
        "blessed": blessing["blessed"],
        "pushed": False,
    }
    refused = [*blessing["reasons"], *([] if infra["passed"] else [f"{infra_validator.REFUSED}: {infra['reason']}"])]
    if refused:
        record["not_pushed_because"] = refused
        log.warning("model not pushed: %s", "; ".join(refused))
    elif serving_root:
        model_base = Path(serving_root) / model_name
        try:
            version = serving.push(
                saved_model, model_base,
                {**(push_record or {}), "model_name": model_name, "test_accuracy": blessing["candidate"]["accuracy"],
                 "infra_validation": {k: infra[k] for k in ("load_seconds", "latency_ms")}},
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

