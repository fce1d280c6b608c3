import json

import numpy as np
import pytest

from scipy.stats import binomtest

from components.evaluate import compute_metrics, judge, judge_slice, paired

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
    assert judge(_metrics(0.95, {}), None, **LIMITS) == ([], [])
    [reason], _ = judge(_metrics(0.85, {}), None, **LIMITS)
    assert "below the minimum 0.9" in reason


def test_every_reason_against_the_baseline_is_named():
    baseline = _metrics(0.99, {3: 0.99})
    reasons, _ = judge(_metrics(0.97, {3: 0.90}), baseline, **LIMITS)
    assert len(reasons) == 2
    assert "trails the served model's 0.9900" in reasons[0]
    assert "recall of digit 3 fell by 0.0900" in reasons[1]
    assert judge(_metrics(0.985, {}), baseline, **LIMITS) == ([], [])  # within tolerance


def _pair(per_digit: dict[int, tuple[int, int, int]], n: int = 180):
    """Labels and two models' probabilities with, per digit, (served right, candidate right, both
    right) images out of `n`; the rest of each digit both get wrong."""
    labels, mine, theirs = [], [], []
    for digit in range(10):
        only_served, only_mine, both = per_digit.get(digit, (0, 0, n - 2))
        for served_right, mine_right, count in ((1, 0, only_served), (0, 1, only_mine), (1, 1, both),
                                                 (0, 0, n - only_served - only_mine - both)):
            labels += [digit] * count
            theirs += [digit if served_right else (digit + 1) % 10] * count
            mine += [digit if mine_right else (digit + 1) % 10] * count
    labels = np.array(labels)
    return labels, _one_hot(np.array(mine)), _one_hot(np.array(theirs))


def _judged(pair, **limits):
    labels, mine, theirs = pair
    return judge(compute_metrics(labels, mine), compute_metrics(labels, theirs), paired(labels, mine, theirs),
                 **{**LIMITS, "max_recall_drop": 0.01, "accuracy_tolerance": 0.02, **limits})


def test_a_one_image_wobble_of_a_digit_is_noise_and_a_real_drop_is_refused():
    # Digit 4: the candidate loses 5 images the served model got and gains 1: 4 of 180 fewer, 2.2%.
    reasons, warnings = _judged(_pair({4: (5, 1, 170)}))
    assert reasons == [] and len(warnings) == 1
    assert warnings[0].startswith("recall of digit 4 fell by 0.0222")
    assert "4 of 180 fewer right (lost 5, gained 1), McNemar p=0.11: within noise" in warnings[0]
    assert binomtest(5, 6, 0.5, alternative="greater").pvalue == pytest.approx(0.109375)
    # Digit 7: 20 lost, 1 gained: the same kind of drop, but real.
    reasons, warnings = _judged(_pair({7: (20, 1, 150)}))
    assert len(reasons) == 1 and warnings == []
    assert reasons[0].startswith("recall of digit 7 fell by 0.1056") and "a real loss" in reasons[0]
    # significance 1: every drop past its tolerance refuses, as before there was a paired test
    assert len(_judged(_pair({4: (5, 1, 170)}), significance=1.0)[0]) == 1


def test_worse_overall_or_under_the_floor_is_refused_whatever_the_noise():
    # Every digit one image worse: no digit is significantly worse, the whole is (and still refused).
    pair = _pair({d: (2, 1, 170) for d in range(10)})
    reasons, warnings = _judged(pair, accuracy_tolerance=0.001)
    assert [r.split(" (")[0] for r in reasons] == ["accuracy 0.9500 trails the served model's 0.9556 by more than 0.001"]
    assert "10 of 1800 fewer right (lost 20, gained 10), McNemar p=" in reasons[0]
    reasons, _ = _judged(pair, min_accuracy=0.96, accuracy_tolerance=1.0)
    assert reasons == ["accuracy 0.9500 is below the minimum 0.96 (evaluate.min_accuracy)"]


def test_a_slice_drop_is_judged_on_its_paired_answers():
    labels, mine, theirs = _pair({1: (1, 0, 35)}, n=36)  # 36 images of one digit, as a small users' slice
    mask = labels == 1
    labels, mine, theirs = labels[mask], mine[mask], theirs[mask]
    gates = {"min_accuracy": 0.5, "max_accuracy_drop": 0.02, "min_count": 20}
    args = ("users", compute_metrics(labels, mine), compute_metrics(labels, theirs), paired(labels, mine, theirs))
    reasons, warnings = judge_slice(*args, **gates)
    assert reasons == [] and "users slice: accuracy 0.9722 trails" in warnings[0] and "within noise" in warnings[0]
    reasons, _ = judge_slice(*args, **gates, significance=1.0)
    assert len(reasons) == 1


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


def test_a_real_pair_of_models_is_judged_on_its_paired_answers(full_run, tmp_path):
    """A one-epoch model served, the session's two-epoch model the candidate: each digit's
    McNemar table agrees with both models' recalls, and every recall drop past the (zero)
    tolerance is refused or warned about with its p-value."""
    from components.evaluate import evaluate
    from components.export import build_saved_model
    from components.train import train
    from components.training import models

    _, run_dir, _ = full_run
    weaker = tmp_path / "weaker"
    train(run_dir / "preprocess", weaker, preset="seed-000", epochs=1, seed=7)
    served = tmp_path / "serving" / "mnist" / "1"
    build_saved_model(models.load(weaker), served)
    blessing = evaluate(run_dir / "train", run_dir / "ingest", tmp_path / "evaluation", baseline=served,
                        min_accuracy=0.0, accuracy_tolerance=1.0, max_recall_drop=0.0)
    candidate, baseline, pairs = blessing["candidate"], blessing["baseline"], blessing["paired"]["test"]
    assert pairs["all"]["images"] == candidate["examples"] == 500
    net = pairs["all"]["gained"] - pairs["all"]["lost"]
    assert net == round((candidate["accuracy"] - baseline["accuracy"]) * 500)
    for digit, counts in pairs["per_digit"].items():
        support = counts["images"]
        assert counts["gained"] - counts["lost"] == round((candidate["recall"][digit] - baseline["recall"][digit]) * support)
        dropped = baseline["recall"][digit] > candidate["recall"][digit]
        said = [t for t in blessing["reasons"] + blessing["warnings"] if t.startswith(f"recall of digit {digit} fell")]
        assert len(said) == int(dropped) and all(f"McNemar p={counts['p_value']:.2g}" in t for t in said)
        assert all(("a real loss" in t) == (counts["p_value"] < 0.05) for t in said)
