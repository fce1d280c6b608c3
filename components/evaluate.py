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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
from scipy.stats import binomtest
from sklearn.metrics import classification_report, confusion_matrix, log_loss

from components import serving
from components.common.records import iter_examples
from components.common.transform import NUM_CLASSES, scale_pixels
from components.serving.client import serving_function
from components.training import models

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


def paired_counts(labels: np.ndarray, mine: np.ndarray, theirs: np.ndarray) -> dict:
    """McNemar's table for images both models answered: `lost` (the served model right, the
    candidate wrong), `gained` (the other way round), and `p_value`, the exact one-sided
    probability of losing at least `lost` of the `lost + gained` images where they disagree
    if neither model were better (a binomial test at one half): small means the candidate
    is really worse on these images, not unlucky."""
    right, served_right = mine.argmax(axis=1) == labels, theirs.argmax(axis=1) == labels
    lost, gained = int((served_right & ~right).sum()), int((right & ~served_right).sum())
    p_value = float(binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue) if lost + gained else 1.0
    return {"images": int(len(labels)), "lost": lost, "gained": gained, "p_value": p_value}


def paired(labels: np.ndarray, mine: np.ndarray, theirs: np.ndarray) -> dict:
    """`paired_counts` over all images and per digit."""
    return {"all": paired_counts(labels, mine, theirs),
            "per_digit": {str(d): paired_counts(labels[labels == d], mine[labels == d], theirs[labels == d])
                          for d in CLASSES}}


def _evidence(counts: dict) -> str:
    net = counts["lost"] - counts["gained"]
    return (f"{net} of {counts['images']} fewer right (lost {counts['lost']}, gained {counts['gained']}), "
            f"McNemar p={counts['p_value']:.2g}")


def _noisy_gate(failed: str, counts: dict | None, significance: float) -> tuple[list[str], list[str]]:
    """A small-count gate that failed on its point estimate: a reason to refuse only when the
    paired test says the loss is real; otherwise a warning that says it is within noise."""
    if counts is None:  # no paired answers (no served model answered): the point estimate decides
        return [failed], []
    if counts["p_value"] < significance:
        return [f"{failed}: {_evidence(counts)} < evaluate.significance {significance}, a real loss"], []
    return [], [f"{failed}: {_evidence(counts)}: within noise (evaluate.significance {significance}), "
                f"not a reason to refuse"]


def judge(candidate: dict, baseline: dict | None, pairs: dict | None = None, *, min_accuracy: float,
          accuracy_tolerance: float, max_recall_drop: float, significance: float = 0.05
          ) -> tuple[list[str], list[str]]:
    """(reasons, warnings): every reason the candidate must not replace the baseline (none:
    blessed). The floor and the overall accuracy gate refuse on the point estimate, as
    before; a digit's recall, a few hundred images, refuses only when its drop is also
    significant on the paired answers (`pairs`, from `paired`)."""
    reasons, warnings = [], []
    if candidate["accuracy"] < min_accuracy:
        reasons.append(
            f"accuracy {candidate['accuracy']:.4f} is below the minimum {min_accuracy} (evaluate.min_accuracy)"
        )
    if baseline is None:
        return reasons, warnings
    if candidate["accuracy"] < baseline["accuracy"] - accuracy_tolerance:
        reasons.append(
            f"accuracy {candidate['accuracy']:.4f} trails the served model's {baseline['accuracy']:.4f} "
            f"by more than {accuracy_tolerance} (evaluate.accuracy_tolerance)"
            + (f": {_evidence(pairs['all'])}" if pairs else "")
        )
    for digit in map(str, CLASSES):
        drop = baseline["recall"][digit] - candidate["recall"][digit]
        if drop > max_recall_drop:
            failed = (f"recall of digit {digit} fell by {drop:.4f} to {candidate['recall'][digit]:.4f}, "
                      f"more than {max_recall_drop} (evaluate.max_recall_drop)")
            refused, noted = _noisy_gate(failed, pairs["per_digit"][digit] if pairs else None, significance)
            reasons += refused
            warnings += noted
    return reasons, warnings


def judge_slice(name: str, candidate: dict, baseline: dict | None, pairs: dict | None = None, *,
                min_accuracy: float, max_accuracy_drop: float, min_count: int,
                significance: float = 0.05) -> tuple[list[str], list[str]]:
    """(reasons, warnings) of a named slice's gates, as TFMA judges a slice on its own
    thresholds. A drop against the served model refuses only when the paired test on the
    slice's images says it is real. A slice with fewer than `min_count` examples says too
    little to block a model: its failed gates become warnings."""
    setting = f"evaluate.slices.{name}"
    failed, warnings = [], []
    if candidate["accuracy"] < min_accuracy:
        failed.append(f"{name} slice: accuracy {candidate['accuracy']:.4f} is below the minimum {min_accuracy} "
                      f"({setting}.min_accuracy)")
    if baseline is not None and baseline["accuracy"] - candidate["accuracy"] > max_accuracy_drop:
        refused, warnings = _noisy_gate(
            f"{name} slice: accuracy {candidate['accuracy']:.4f} trails the served model's "
            f"{baseline['accuracy']:.4f} on the same {candidate['examples']} images by more than "
            f"{max_accuracy_drop} ({setting}.max_accuracy_drop)", pairs["all"] if pairs else None, significance)
        failed += refused
    if candidate["examples"] >= min_count:
        return failed, warnings
    few = (f"{name} slice has {candidate['examples']} image(s), fewer than {setting}.min_count ({min_count}): "
           f"its gates only warn")
    return [], [few, *failed, *warnings]


def evaluate(
    model: Path,
    examples: Path,
    evaluation: Path,
    *,
    baseline: Path | None = None,
    min_accuracy: float = 0.97,
    accuracy_tolerance: float = 0.001,
    max_recall_drop: float = 0.01,
    significance: float = 0.05,
    slices: dict | None = None,
) -> dict:
    """Evaluate `model/model.keras` on the test split of `examples`, and on each named slice
    it holds (`users`: the held-out extra images) with that slice's gates in `slices`; return
    blessing.json.

    A split is read a batch at a time; what is kept of it is each example's label and
    predicted probabilities (both models'), and the images of the most confident mistakes.
    """
    net = models.load(model)
    warnings: list[str] = []
    served = _Served(baseline, warnings)
    scored = {"test": _score(net, served, examples, "test", keep_worst=True)}
    for name in slices or {}:
        if list(Path(examples).glob(f"{name}-*.tfrecord")):
            scored[name] = _score(net, served, examples, name)
    metrics = {name: (compute_metrics(s.labels, s.probabilities),
                      compute_metrics(s.labels, s.served) if s.served is not None else None) for name, s in scored.items()}

    out = Path(evaluation)
    out.mkdir(parents=True, exist_ok=True)
    test, candidate = scored["test"], metrics["test"][0]
    write_reports(out, test.labels, test.probabilities.argmax(axis=1), candidate)
    write_worst_misclassified(out, test.worst, test.worst_images)
    pairs = {name: paired(s.labels, s.probabilities, s.served) for name, s in scored.items() if s.served is not None}
    reasons, noted = judge(candidate, metrics["test"][1], pairs.get("test"), min_accuracy=min_accuracy,
                           accuracy_tolerance=accuracy_tolerance, max_recall_drop=max_recall_drop,
                           significance=significance)
    warnings += noted
    for name in sorted(scored.keys() - {"test"}):
        slice_reasons, slice_warnings = judge_slice(name, *metrics[name], pairs.get(name), **slices[name],
                                                    significance=significance)
        reasons += slice_reasons
        warnings += slice_warnings
    blessing = {
        "blessed": not reasons,
        "reasons": reasons,
        "candidate": _summary(model, candidate),
        "baseline": _summary(baseline, metrics["test"][1]) if metrics["test"][1] else None,
        # Every slice for both models, the test split first: what the report and the nightly show.
        "slices": {name: {"candidate": _summary(model, mine), "baseline": _summary(baseline, theirs) if theirs else None}
                   for name, (mine, theirs) in metrics.items()},
        # What export's push checks is still served (a loaded baseline or a broken one).
        "judged_against": serving.identity(Path(baseline).parent, int(Path(baseline).name)) if baseline else None,
        "warnings": warnings,
        # McNemar's table per split (and per digit): the images one model got right and the other wrong.
        "paired": pairs,
        "thresholds": {"min_accuracy": min_accuracy, "accuracy_tolerance": accuracy_tolerance,
                       "max_recall_drop": max_recall_drop, "significance": significance, "slices": slices or {}},
    }
    (out / "blessing.json").write_text(json.dumps(blessing, indent=2))
    return blessing


class _Served:
    """The served baseline's predictions, or none once it has failed to load or answer
    (with a warning): a broken served model must not block the model that replaces it."""

    def __init__(self, baseline: Path | None, warnings: list[str]):
        self.baseline, self.warnings = baseline, warnings
        self.predict = None
        if baseline:  # checked from its files first, as `models` checks it: a garbled graph is never run
            problem = serving.broken(baseline)
            if problem:
                _not_a_baseline(baseline, problem, warnings)
            else:
                self.predict = _try_baseline(lambda: serving_function(baseline), baseline, warnings)

    @property
    def alive(self) -> bool:
        return self.predict is not None

    def __call__(self, images):
        answer = _try_baseline(lambda: self.predict(images), self.baseline, self.warnings) if self.predict else None
        if answer is None:
            self.predict = None
        return answer


@dataclass
class _Scored:
    labels: np.ndarray
    probabilities: np.ndarray
    served: np.ndarray | None
    worst: list[dict]
    worst_images: dict[int, np.ndarray]


def _score(net, served: _Served, examples: Path, split: str, keep_worst: bool = False) -> _Scored:
    """Both models' predictions on one split, streamed a batch at a time (and the images of
    the most confident mistakes, when asked)."""
    labels, probabilities, served_probabilities = [], [], []
    worst, worst_images, seen = [], {}, 0
    for images, batch_labels in iter_examples(examples, split, BATCH_SIZE):
        batch = np.asarray(net.predict_on_batch(scale_pixels(images)))
        if served.alive:
            answer = served(images)
            if answer is not None:
                served_probabilities.append(answer)
        if keep_worst:
            batch_worst = worst_misclassified(batch_labels, batch, offset=seen)
            worst_images.update({miss["index"]: images[miss["index"] - seen] for miss in batch_worst})
            worst = sorted(worst + batch_worst, key=lambda miss: (-miss["confidence"], miss["index"]))[:WORST_SHOWN]
            worst_images = {miss["index"]: worst_images[miss["index"]] for miss in worst}
        labels.append(batch_labels)
        probabilities.append(batch)
        seen += len(images)
    return _Scored(np.concatenate(labels), np.concatenate(probabilities),
                   np.concatenate(served_probabilities) if served.alive else None, worst, worst_images)


def _try_baseline(call, baseline: Path, warnings: list[str]):
    """`call()`, or None with a warning: a broken served model must not block the model
    that replaces it."""
    try:
        return call()
    except Exception as err:
        _not_a_baseline(baseline, (str(err).strip().splitlines() or [type(err).__name__])[0], warnings)
        return None


def _not_a_baseline(baseline: Path, reason: str, warnings: list[str]) -> None:
    warnings.append(f"the served model {baseline} cannot be loaded ({reason}); it is not a baseline, "
                    f"so the candidate is judged on evaluate.min_accuracy alone and replaces it if blessed")
    log.warning("%s", warnings[-1])


def _summary(model: Path, metrics: dict) -> dict:
    return {"model": str(model), **{k: metrics[k] for k in ("examples", "accuracy", "loss", "recall")}}


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
