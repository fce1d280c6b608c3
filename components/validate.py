"""Validate: the preprocess statistics checked against bounds, before any training.

Reads `transformed/statistics.json` (computed in the Beam job) and, when an earlier run's
data was accepted, that run's statistics as the reference for drift. Writes
`validation/anomalies.json`: every check with its measured value, its bound, the setting
that bounds it, its severity and its verdict. The checks are pure functions of the
statistics; stopping the run is the pipeline's decision (`pipeline.graph`), not this one's.

Distances are those TFDV uses: L-infinity between class distributions, Jensen-Shannon
distance (base 2, 0..1) between pixel-intensity histograms.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

RAW_SPLITS = ("train", "test")  # where invalid examples are counted (before train/validation split)
SPLITS = ("train", "validation", "test")
CHECKS = ("image_shape", "label_range", "pixel_range", "empty_split", "class_balance",
          "skew_classes", "skew_pixels", "skew_pixel_mean", "skew_pixel_std",
          "drift_classes", "drift_pixels", "drift_pixel_mean", "drift_pixel_std")


def class_distribution(stats: dict) -> np.ndarray:
    counts = np.array([stats["class_histogram"][str(c)] for c in range(len(stats["class_histogram"]))], float)
    return counts / max(counts.sum(), 1.0)


def linf(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.abs(p - q).max())


def js_distance(p, q) -> float:
    from scipy.spatial.distance import jensenshannon  # here: the configuration imports CHECKS, cheaply

    p, q = np.asarray(p, float), np.asarray(q, float)
    if p.sum() == 0 or q.sum() == 0:
        return 1.0 if p.sum() != q.sum() else 0.0
    return float(jensenshannon(p, q, base=2))


def _check(name, split, value, bound, setting, ok, message) -> dict:
    value = value if value is None or isinstance(value, int) else round(float(value), 6)
    return {"name": name, "split": split, "value": value,
            "bound": bound, "setting": f"validation.{setting}", "ok": bool(ok), "message": message}


def data_checks(statistics: dict, *, max_invalid: int, min_examples: int, max_class_imbalance: float) -> list[dict]:
    """Shape, labels, pixel range, empty splits and class balance of one preprocess output."""
    checks = []
    for split in RAW_SPLITS:
        invalid = statistics[split].get("invalid", {})
        for name, kind, what in (("image_shape", "shape", "images not 28x28 uint8"),
                                 ("label_range", "label", "labels outside 0..9")):
            n = invalid.get(kind, 0)
            checks.append(_check(name, split, n, f"<= {max_invalid}", "max_invalid", n <= max_invalid,
                                 f"{n} {what}"))
    for split in SPLITS:
        stats = statistics[split]
        if stats["count"]:
            low, high = stats["pixel_min"], stats["pixel_max"]
            outside = max(0.0 - low, high - 1.0, 0.0)
            checks.append(_check("pixel_range", split, outside, "<= 0", "max_invalid", outside <= 0,
                                 f"scaled pixels span [{low:.3f}, {high:.3f}], expected within [0, 1]"))
        checks.append(_check("empty_split", split, stats["count"], f">= {min_examples}", "min_examples",
                             stats["count"] >= min_examples, f"{stats['count']} examples"))
    for split in RAW_SPLITS:
        dist = class_distribution(statistics[split])
        imbalance = linf(dist, np.full_like(dist, 1 / len(dist)))
        checks.append(_check("class_balance", split, imbalance, f"<= {max_class_imbalance}", "max_class_imbalance",
                             imbalance <= max_class_imbalance,
                             f"class shares {dist.min():.3f}..{dist.max():.3f}; L-infinity from uniform {imbalance:.4f}"))
    return checks


def distance_checks(prefix: str, pairs: list[tuple[str, dict, dict]], bounds: dict, what: str) -> list[dict]:
    """`skew` (train against test) or `drift` (each split against the reference run's):
    class distribution (L-infinity), pixel histogram (Jensen-Shannon), pixel mean and std."""
    checks = []
    for split, a, b in pairs:
        if not a["count"] or not b["count"]:
            continue  # empty_split reports it
        measures = {
            "classes": linf(class_distribution(a), class_distribution(b)),
            "pixels": js_distance(a["pixel_histogram"], b["pixel_histogram"]),
            "pixel_mean": abs(a["pixel_mean"] - b["pixel_mean"]),
            "pixel_std": abs(a["pixel_std"] - b["pixel_std"]),
        }
        for measure, value in measures.items():
            bound = bounds[measure]
            checks.append(_check(f"{prefix}_{measure}", split, value, f"<= {bound}", f"{prefix}.{measure}",
                                 value <= bound, f"{measure.replace('_', ' ')} {value:.4f} {what}"))
    return checks


def run_checks(statistics: dict, reference: dict | None, *, max_invalid: int, min_examples: int,
               max_class_imbalance: float, skew: dict, drift: dict, warn_only=()) -> list[dict]:
    """Every check, with its severity: `error` unless its name is in `warn_only`."""
    checks = data_checks(statistics, max_invalid=max_invalid, min_examples=min_examples,
                         max_class_imbalance=max_class_imbalance)
    checks += distance_checks("skew", [("train", statistics["train"], statistics["test"])], skew,
                              "between train and test")
    if reference:
        checks += distance_checks("drift", [(s, statistics[s], reference[s]) for s in SPLITS if s in reference],
                                  drift, "from the reference run")
    for check in checks:
        check["severity"] = "warning" if check["name"] in warn_only else "error"
    return checks


def anomaly_lines(anomalies: dict, severity: str = "error") -> list[str]:
    """One line per failed check of `severity`: the check, the value, the setting that bounds it."""
    return [
        f"{c['name']} ({c['split']}): {c['message']}; bound {c['bound']} ({c['setting']})"
        for c in anomalies["checks"] if not c["ok"] and c["severity"] == severity
    ]


def validate(transformed: Path, validation: Path, *, reference: Path | None = None, max_invalid: int = 0,
             min_examples: int = 1, max_class_imbalance: float = 0.05, skew: dict, drift: dict,
             warn_only: list[str] | tuple[str, ...] = ()) -> dict:
    """Check `transformed/statistics.json` (against `reference`, an earlier accepted run's
    statistics.json, when given); write and return anomalies.json."""
    statistics = json.loads((Path(transformed) / "statistics.json").read_text())
    reference_stats = json.loads(Path(reference).read_text()) if reference else None
    checks = run_checks(statistics, reference_stats, max_invalid=max_invalid, min_examples=min_examples,
                        max_class_imbalance=max_class_imbalance, skew=skew, drift=drift, warn_only=warn_only)
    anomalies = {
        "passed": not any(not c["ok"] and c["severity"] == "error" for c in checks),
        "reference": str(reference) if reference else None,
        "errors": sum(not c["ok"] and c["severity"] == "error" for c in checks),
        "warnings": sum(not c["ok"] and c["severity"] == "warning" for c in checks),
        "checks": checks,
    }
    out = Path(validation)
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / ".anomalies.json.tmp"
    scratch.write_text(json.dumps(anomalies, indent=2))
    os.replace(scratch, out / "anomalies.json")
    return anomalies
