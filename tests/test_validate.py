"""Data validation: the checks on statistics, and anomalies injected into real ingest output
that each stop a real run before training."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from components.validate import anomaly_lines, js_distance, run_checks
from pipeline.config import load_config
from pipeline.graph import DataAnomalies
from pipeline.runner import run
from pipeline.store import RUN_RECORD
from tests.conftest import small_overrides

BOUNDS = load_config().validation.model_dump()


def split_stats(count=1000, classes=None, pixels=None, mean=0.13, std=0.31, invalid=None):
    classes = np.full(10, 0.1) if classes is None else np.asarray(classes, float)
    pixels = [0.8] + [0.2 / 19] * 19 if pixels is None else pixels
    return {"count": count, "class_histogram": {str(c): int(round(s * count)) for c, s in enumerate(classes)},
            "pixel_mean": mean, "pixel_std": std, "pixel_min": 0.0, "pixel_max": 1.0,
            "pixel_histogram": pixels, "invalid": invalid or {}}


def statistics(**train):
    return {"train": split_stats(**train), "validation": split_stats(count=100), "test": split_stats()}


def failed(checks):
    return {(c["name"], c["split"]) for c in checks if not c["ok"]}


def test_clean_statistics_pass_every_check():
    checks = run_checks(statistics(), statistics(), **BOUNDS)
    assert failed(checks) == set()
    assert {c["name"] for c in checks} >= {"image_shape", "label_range", "empty_split", "class_balance",
                                          "skew_classes", "drift_pixels"}


def test_each_anomaly_fails_its_own_check_with_value_bound_and_setting():
    assert ("label_range", "train") in failed(run_checks(statistics(invalid={"label": 2}), None, **BOUNDS))
    assert ("image_shape", "train") in failed(run_checks(statistics(invalid={"shape": 1}), None, **BOUNDS))
    assert ("empty_split", "train") in failed(run_checks(statistics(count=0), None, **BOUNDS))
    skewed = [0.3] + [0.7 / 9] * 9
    assert {("class_balance", "train"), ("skew_classes", "train")} <= failed(
        run_checks(statistics(classes=skewed), None, **BOUNDS))
    dark = [0.9] + [0.1 / 19] * 19
    drift = run_checks(statistics(), statistics(pixels=dark, mean=0.08), **BOUNDS)
    assert {("drift_pixels", "train"), ("drift_pixel_mean", "train")} <= failed(drift)
    line = anomaly_lines({"checks": drift})[0]
    assert "drift_pixels (train)" in line and "validation.drift.pixels" in line and "<= " in line


def test_jensen_shannon_distance_is_zero_for_equal_and_one_for_disjoint_histograms():
    assert js_distance([1, 0, 1], [2, 0, 2]) == pytest.approx(0.0)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)


def test_a_check_set_to_warn_only_is_a_warning():
    checks = run_checks(statistics(invalid={"label": 2}), None, **{**BOUNDS, "warn_only": ["label_range"]})
    label = next(c for c in checks if c["name"] == "label_range" and c["split"] == "train")
    assert not label["ok"] and label["severity"] == "warning"
    assert anomaly_lines({"checks": checks}) == [] and len(anomaly_lines({"checks": checks}, "warning")) == 1


# --- anomalies injected into a real slice's ingest output --------------------------------------

@pytest.fixture(scope="module")
def accepted(tmp_path_factory, tfds_dir):
    """An artifacts root whose one run ingested and validated clean data (the drift reference)."""
    root = tmp_path_factory.mktemp("validated")
    cfg = load_config(small_overrides(tfds_dir, **{"train.epochs": 1}))
    run(cfg, root, components=["ingest", "preprocess", "validate"])
    return root, tfds_dir


def _records(path: Path) -> list[bytes]:
    import tensorflow as tf

    return [r.numpy() for r in tf.data.TFRecordDataset(str(path))]


def _rewrite(root: Path, split: str, change) -> None:
    """Replaces the newest ingest output's `split` shards by one shard of change(examples)."""
    import tensorflow as tf

    from components.common.records import parse_example, serialize_example

    ingest = max((root / "runs").glob("*/ingest"))
    shards = sorted(ingest.glob(f"{split}-*.tfrecord"))
    examples = [parse_example(r) for shard in shards for r in _records(shard)]
    for shard in shards:
        shard.unlink()
    with tf.io.TFRecordWriter(str(ingest / f"{split}-00000-of-00001.tfrecord")) as writer:
        for image, label in change(examples):
            writer.write(serialize_example(np.asarray(image, np.uint8).tobytes(), label))
    # As if ingest had written these records: its manifest describes them (else they are damaged).
    from pipeline.graph import STEPS
    from pipeline.store import file_records

    manifest = json.loads((ingest / "manifest.json").read_text())
    manifest["files"] = file_records(ingest)
    manifest["content"] = STEPS["ingest"].content(ingest, manifest["files"])
    (ingest / "manifest.json").write_text(json.dumps(manifest))


def _run_on(accepted, tmp_path, changes: dict, **overrides):
    root = tmp_path / "artifacts"
    shutil.copytree(accepted[0], root)
    for split, change in changes.items():
        _rewrite(root, split, change)
    cfg = load_config(small_overrides(accepted[1], **{"train.epochs": 1, **overrides}))
    return root, cfg


def _stops_before_training(root, cfg, check: str) -> dict:
    with pytest.raises(DataAnomalies, match=check):
        run(cfg, root, components=["preprocess", "validate", "train"])
    newest = max((root / "runs").iterdir())
    record = json.loads((newest / RUN_RECORD).read_text())
    assert record["status"] == "failed" and "train" not in record["components"]
    assert not (newest / "train").exists()
    anomalies = json.loads((newest / "validate" / "anomalies.json").read_text())
    assert not anomalies["passed"]
    return anomalies


def _failed(anomalies) -> set[str]:
    return {c["name"] for c in anomalies["checks"] if not c["ok"]}


@pytest.mark.parametrize("split, change, check", [
    ("train", lambda ex: ex + [(ex[0][0], 11)], "label_range"),
    ("train", lambda ex: ex + [(np.zeros(27 * 28), 3)], "image_shape"),
    ("test", lambda ex: [], "empty_split"),
    ("train", lambda ex: [(i, lab) for i, lab in ex if lab >= 5], "class_balance"),
], ids=["label-11", "wrong-shape", "empty-test-split", "shifted-class-balance"])
def test_an_injected_anomaly_stops_the_run_before_training(accepted, tmp_path, split, change, check):
    anomalies = _stops_before_training(*_run_on(accepted, tmp_path, {split: change}), check)
    assert check in _failed(anomalies)


def test_a_drifted_pixel_distribution_stops_the_run(accepted, tmp_path):
    darker = lambda ex: [((np.asarray(i) * 0.6).astype(np.uint8), lab) for i, lab in ex]  # noqa: E731
    root, cfg = _run_on(accepted, tmp_path, {"train": darker, "test": darker})
    anomalies = _stops_before_training(root, cfg, "drift_pixel")
    assert {"drift_pixels", "drift_pixel_mean"} <= _failed(anomalies)
    assert "skew_pixels" not in _failed(anomalies)  # train and test darkened alike: no skew, only drift
    assert anomalies["reference"].endswith("statistics.json")


def test_a_check_downgraded_to_a_warning_lets_the_run_go_on(accepted, tmp_path, caplog):
    root, cfg = _run_on(accepted, tmp_path, {"train": lambda ex: ex + [(ex[0][0], 11)]},
                        **{"validation.warn_only": "[label_range]"})
    run_dir = run(cfg, root, components=["preprocess", "validate", "train"])
    assert (run_dir / "train" / "model.keras").is_file()
    anomalies = json.loads((run_dir / "validate" / "anomalies.json").read_text())
    assert anomalies["passed"] and anomalies["warnings"] == 1
    assert "data validation warning: label_range (train): 1 labels outside 0..9" in caplog.text
    statistics = json.loads((run_dir / "preprocess" / "statistics.json").read_text())
    assert statistics["train"]["invalid"] == {"label": 1}  # counted, and left out of the TFRecords
