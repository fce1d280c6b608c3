import json

import numpy as np
import pytest

from components.evaluate import compute_metrics, judge

LIMITS = dict(min_accuracy=0.9, accuracy_tolerance=0.01, max_recall_drop=0.05)


def _one_hot(predicted):
    return np.eye(10)[predicted] * 0.9 + 0.01


def test_compute_metrics_counts_and_rates():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    predicted = np.array([0, 1, 1, 1, 2, 2, 3, 3, 4, 0])
    metrics = compute_metrics(labels, _one_hot(predicted))
    assert metrics["accuracy"] == 0.8
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 10
    assert matrix[0, 1] == 1 and matrix[4, 0] == 1 and matrix[1, 1] == 2
    assert metrics["recall"]["0"] == 0.5 and metrics["recall"]["1"] == 1.0 and metrics["recall"]["9"] == 0.0
    assert metrics["loss"] > 0


def _metrics(accuracy, recall):
    return {"accuracy": accuracy, "recall": {str(c): recall.get(c, 0.99) for c in range(10)}}


def test_blessed_without_baseline_when_above_minimum():
    assert judge(_metrics(0.95, {}), None, **LIMITS) == []
    [reason] = judge(_metrics(0.85, {}), None, **LIMITS)
    assert "below the minimum 0.9" in reason


def test_every_reason_against_the_baseline_is_named():
    baseline = _metrics(0.99, {3: 0.99})
    reasons = judge(_metrics(0.97, {3: 0.90}), baseline, **LIMITS)
    assert len(reasons) == 2
    assert "trails the served model's 0.9900" in reasons[0]
    assert "recall of digit 3 fell by 0.0900" in reasons[1]
    assert judge(_metrics(0.985, {}), baseline, **LIMITS) == []  # within tolerance


def test_evaluate_artifacts_of_a_run(full_run):
    _, run_dir, _ = full_run
    evaluation = run_dir / "evaluate"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    confusion = json.loads((evaluation / "confusion_matrix.json").read_text())
    counts = np.array(confusion["counts"])
    assert counts.shape == (10, 10)
    assert counts.sum() == metrics["examples"] == 500
    assert np.trace(counts) / counts.sum() == metrics["accuracy"]
    report = json.loads((evaluation / "classification_report.json").read_text())
    assert report["accuracy"] == metrics["accuracy"]
    assert sum(report[str(c)]["support"] for c in range(10)) == 500
    assert "precision" in (evaluation / "classification_report.txt").read_text()
    assert (evaluation / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    blessing = json.loads((evaluation / "blessing.json").read_text())
    assert blessing["blessed"] is True and blessing["baseline"] is None  # first run: nothing served yet


def test_evaluation_read_in_small_batches_matches_one_batch(full_run, tmp_path, monkeypatch):
    import components.evaluate as evaluate_module

    _, run_dir, _ = full_run
    results = {}
    for batch_size in (1000, 64):  # the 500 test images in one batch, then in eight
        monkeypatch.setattr(evaluate_module, "BATCH_SIZE", batch_size)
        out = tmp_path / str(batch_size)
        evaluate_module.evaluate(run_dir / "train", run_dir / "ingest", out, min_accuracy=0.5)
        results[batch_size] = {name: json.loads((out / name).read_text())
                               for name in ("metrics.json", "confusion_matrix.json", "worst_misclassified.json")}
    assert results[64] == results[1000]
    assert results[64]["worst_misclassified.json"]  # a 2-epoch slice model makes mistakes to rank


def test_benchmarks_averaged_accuracy_reads_each_model_and_refuses_other_test_splits(full_run, tmp_path):
    from benchmarks.models import averaged_accuracy
    from pipeline.store import MANIFEST, read_manifest

    run_dir = full_run[1]
    manifest = read_manifest(run_dir / "evaluate" / MANIFEST)
    # One model averaged with itself answers as it does alone: evaluate's own accuracy.
    assert averaged_accuracy([run_dir, run_dir]) == manifest["result"]["candidate"]["accuracy"]
    other = tmp_path / "other-run"
    (other / "evaluate").mkdir(parents=True)
    manifest["inputs"]["examples"] = str(tmp_path / "another-ingest")
    (other / "evaluate" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="evaluated on different test splits"):
        averaged_accuracy([run_dir, other])
