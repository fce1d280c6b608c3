"""Evaluate: the trained model on the raw test split, and whether it deserves to ship.

Output (`evaluation/`): `metrics.json` (loss, accuracy, per-class recall),
`classification_report.txt` and `.json` (scikit-learn), `confusion_matrix.json`
(counts; rows are true labels), `confusion_matrix.png` (seaborn heatmap) and
`confusion_matrix_errors.png` (the off-diagonal cells only, on their own colour scale),
`worst_misclassified.png` and `.json` (the most confident mistakes), and
`blessing.json`: blessed or not, with every reason and both models' per-class recall,
after comparing with the currently served model (the baseline) on the same images.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
from sklearn.metrics import classification_report, confusion_matrix, log_loss

from components import serving
from components.client import serving_function
from components.records import iter_examples
from components.transform import NUM_CLASSES, scale_pixels

CLASSES = list(range(NUM_CLASSES))
WORST_SHOWN = 24  # misclassified test images in the grid, most confident first
BATCH_SIZE = 1000  # test images read and predicted at a time
log = logging.getLogger(__name__)


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Loss, accuracy, per-class recall and the confusion matrix of one set of predictions."""
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, labels=CLASSES)
    support = matrix.sum(axis=1)
    recall = np.divide(np.diag(matrix), support, out=np.zeros(NUM_CLASSES), where=support > 0)
    return {
        "examples": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "loss": float(log_loss(labels, np.clip(probabilities, 1e-7, 1.0), labels=CLASSES)),
        "recall": {str(c): float(r) for c, r in enumerate(recall)},
        "confusion_matrix": matrix.tolist(),
    }


def judge(candidate: dict, baseline: dict | None, *, min_accuracy: float, accuracy_tolerance: float,
          max_recall_drop: float) -> list[str]:
    """Every reason the candidate must not replace the baseline; empty means blessed."""
    reasons = []
    if candidate["accuracy"] < min_accuracy:
        reasons.append(
            f"accuracy {candidate['accuracy']:.4f} is below the minimum {min_accuracy} (evaluate.min_accuracy)"
        )
    if baseline is None:
        return reasons
    if candidate["accuracy"] < baseline["accuracy"] - accuracy_tolerance:
        reasons.append(
            f"accuracy {candidate['accuracy']:.4f} trails the served model's {baseline['accuracy']:.4f} "
            f"by more than {accuracy_tolerance} (evaluate.accuracy_tolerance)"
        )
    for digit in map(str, CLASSES):
        drop = baseline["recall"][digit] - candidate["recall"][digit]
        if drop > max_recall_drop:
            reasons.append(
                f"recall of digit {digit} fell by {drop:.4f} to {candidate['recall'][digit]:.4f}, "
                f"more than {max_recall_drop} (evaluate.max_recall_drop)"
            )
    return reasons


def evaluate(
    model: Path,
    examples: Path,
    evaluation: Path,
    *,
    baseline: Path | None = None,
    min_accuracy: float = 0.97,
    accuracy_tolerance: float = 0.001,
    max_recall_drop: float = 0.01,
) -> dict:
    """Evaluate `model/model.keras` on the test split of `examples`; return blessing.json.

    The split is read a batch at a time; what is kept of it is each example's label and
    predicted probabilities (both models'), and the images of the most confident mistakes.
    """
    net = keras.models.load_model(Path(model) / "model.keras")
    warnings: list[str] = []
    served_predict = _try_baseline(lambda: serving_function(baseline), baseline, warnings) if baseline else None
    labels, probabilities, served_probabilities = [], [], []
    worst, worst_images, seen = [], {}, 0
    for images, batch_labels in iter_examples(examples, "test", BATCH_SIZE):
        batch = np.asarray(net.predict_on_batch(scale_pixels(images)))
        if served_predict:
            served_batch = _try_baseline(lambda: served_predict(images), baseline, warnings)
            if served_batch is None:
                served_predict = None
            else:
                served_probabilities.append(served_batch)
        batch_worst = worst_misclassified(batch_labels, batch, offset=seen)
        worst_images.update({miss["index"]: images[miss["index"] - seen] for miss in batch_worst})
        worst = sorted(worst + batch_worst, key=lambda miss: (-miss["confidence"], miss["index"]))[:WORST_SHOWN]
        worst_images = {miss["index"]: worst_images[miss["index"]] for miss in worst}
        labels.append(batch_labels)
        probabilities.append(batch)
        seen += len(images)
    labels, probabilities = np.concatenate(labels), np.concatenate(probabilities)
    candidate = compute_metrics(labels, probabilities)
    served = compute_metrics(labels, np.concatenate(served_probabilities)) if served_predict else None

    out = Path(evaluation)
    out.mkdir(parents=True, exist_ok=True)
    write_reports(out, labels, probabilities.argmax(axis=1), candidate)
    write_worst_misclassified(out, worst, worst_images)
    reasons = judge(candidate, served, min_accuracy=min_accuracy, accuracy_tolerance=accuracy_tolerance,
                    max_recall_drop=max_recall_drop)
    blessing = {
        "blessed": not reasons,
        "reasons": reasons,
        "candidate": _summary(model, candidate),
        "baseline": _summary(baseline, served) if served else None,
        # What export's push checks is still served (a loaded baseline or a broken one).
        "judged_against": serving.identity(Path(baseline).parent, int(Path(baseline).name)) if baseline else None,
        "warnings": warnings,
        "thresholds": {"min_accuracy": min_accuracy, "accuracy_tolerance": accuracy_tolerance,
                       "max_recall_drop": max_recall_drop},
    }
    (out / "blessing.json").write_text(json.dumps(blessing, indent=2))
    return blessing


def _try_baseline(call, baseline: Path, warnings: list[str]):
    """`call()`, or None with a warning: a broken served model must not block the model
    that replaces it."""
    try:
        return call()
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        warnings.append(f"the served model {baseline} cannot be loaded ({reason}); it is not a baseline, "
                        f"so the candidate is judged on evaluate.min_accuracy alone and replaces it if blessed")
        log.warning("%s", warnings[-1])
        return None


def _summary(model: Path, metrics: dict) -> dict:
    return {"model": str(model), **{k: metrics[k] for k in ("accuracy", "loss", "recall")}}


def worst_misclassified(labels: np.ndarray, probabilities: np.ndarray, n: int = WORST_SHOWN, *,
                        offset: int = 0) -> list[dict]:
    """The `n` wrong predictions made with the highest confidence, most confident first;
    indices count from `offset` (the batch's first example)."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:n]
    return [{"index": offset + int(i), "true": int(labels[i]), "predicted": int(predicted[i]),
             "confidence": float(confidence[i])} for i in worst]


def write_worst_misclassified(out: Path, worst: list[dict], images: dict[int, np.ndarray]) -> None:
    (out / "worst_misclassified.json").write_text(
        json.dumps([{**miss, "confidence": round(miss["confidence"], 4)} for miss in worst], indent=2))
    columns = 8
    rows = max(1, -(-len(worst) // columns))
    fig = Figure(figsize=(columns * 1.3, rows * 1.75))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, miss in zip(axes, worst):
        ax.imshow(images[miss["index"]].reshape(28, 28), cmap="gray_r")
        ax.set_title(f"true {miss['true']} / pred {miss['predicted']}\n{miss['confidence']:.0%} sure", fontsize=8)
    fig.suptitle(f"The {len(worst)} most confident mistakes on the test set" if worst else "No mistakes")
    fig.tight_layout()
    fig.savefig(out / "worst_misclassified.png", dpi=100)


def write_reports(out: Path, labels: np.ndarray, predicted: np.ndarray, metrics: dict) -> None:
    names = [str(c) for c in CLASSES]
    report = dict(y_true=labels, y_pred=predicted, labels=CLASSES, target_names=names, digits=4, zero_division=0)
    (out / "classification_report.txt").write_text(classification_report(**report))
    (out / "classification_report.json").write_text(json.dumps(classification_report(**report, output_dict=True), indent=2))
    (out / "confusion_matrix.json").write_text(
        json.dumps({"labels": names, "rows": "true label", "columns": "predicted label",
                    "counts": metrics["confusion_matrix"]}, indent=2)
    )
    (out / "metrics.json").write_text(
        json.dumps({k: v for k, v in metrics.items() if k != "confusion_matrix"}, indent=2)
    )
    fig = Figure(figsize=(8, 7))
    ax = fig.subplots()
    sns.heatmap(np.array(metrics["confusion_matrix"]), annot=True, fmt="d", cmap="Blues", cbar=False,
                xticklabels=names, yticklabels=names, ax=ax)
    ax.set(xlabel="predicted digit", ylabel="true digit",
           title=f"Confusion matrix: {metrics['examples']} test images, accuracy {metrics['accuracy']:.4f}")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)

    # At 99.7% accuracy the diagonal owns the colour scale; masked, the few errors show.
    counts = np.array(metrics["confusion_matrix"])
    fig = Figure(figsize=(8, 7))
    ax = fig.subplots()
    sns.heatmap(counts, mask=np.eye(NUM_CLASSES, dtype=bool), annot=True, fmt="d", cmap="Reds", cbar=True,
                xticklabels=names, yticklabels=names, ax=ax, vmin=0, linewidths=0.5, linecolor="#eee")
    ax.set(xlabel="predicted digit", ylabel="true digit",
           title=f"Errors only: {int(counts.sum() - np.trace(counts))} misclassified test images")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix_errors.png", dpi=100)
