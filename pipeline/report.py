"""The run report (`<run>/report.html`) and the index of runs (`<artifacts>/index.html`).

Both are rendered from the store's records with Jinja2 and are self-contained: every
picture is embedded as a PNG data URI (and also kept as a file in `<run>/report/`), the
style is inline, nothing is fetched, so a report opens from disk or as a mail attachment.
The pictures that need the model or the images come from evaluate; this module draws
only from JSON, and imports no TensorFlow.
"""
from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path

import jinja2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline import lineage
from pipeline.store import RUN_RECORD, read_json, write_atomic

log = logging.getLogger("pipeline")
# Always on: select_autoescape() decides by the last extension, `.j2`, which turned it off.
# Settings, paths, error text and file names in a report come from outside.
TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"), autoescape=True)
EVALUATE_PICTURES = ("confusion_matrix.png", "confusion_matrix_errors.png", "worst_misclassified.png")


def _json(path: Path | None, default=None):
    return read_json(path) if path and path.suffix == ".json" and path.is_file() else default


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def training_curves(history: dict) -> bytes:
    fig = Figure(figsize=(10, 3.6))
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], style, marker="o", ms=3, label=key)
        ax.set(xlabel="epoch", title=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(fig)


def class_histograms(statistics: dict) -> bytes:
    fig = Figure(figsize=(10, 3.2))
    ax = fig.subplots()
    splits = [s for s in ("train", "validation", "test") if s in statistics]
    width = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
        hist = statistics[split]["class_histogram"]
        total = max(sum(hist.values()), 1)
        ax.bar(np.arange(10) + i * width, [hist[str(c)] / total for c in range(10)], width, label=split)
    ax.set(xticks=np.arange(10) + width * (len(splits) - 1) / 2, xticklabels=range(10), xlabel="digit",
           ylabel="share of split", title="Class distribution per split")
    ax.legend()
    return _png(fig)


def pixel_histograms(statistics: dict) -> bytes:
    fig = Figure(figsize=(10, 3.2))
    ax = fig.subplots()
    for split in ("train", "validation", "test"):
        bins = statistics.get(split, {}).get("pixel_histogram")
        if bins:
            ax.plot((np.arange(len(bins)) + 0.5) / len(bins), bins, marker="o", ms=3, label=split)
    ax.set(yscale="log", xlabel="scaled pixel intensity", ylabel="share of pixels (log)",
           title="Pixel-intensity distribution per split")
    ax.legend()
    return _png(fig)


def _artifact(run_dir: Path, record: dict, component: str) -> Path | None:
    return lineage.artifact(run_dir, component, record)


def build_report(run_dir: Path) -> Path:
    """Writes `<run>/report.html` and `<run>/report/*.png` from what the run has; returns the html path."""
    run_dir = Path(run_dir)
    record = read_json(run_dir / RUN_RECORD)
    if not record:
        raise FileNotFoundError(f"no run in {run_dir}; `python -m pipeline runs` lists them")
    found = {name: _artifact(run_dir, record, name) for name in lineage.STEPS}
    statistics = _json(found["preprocess"] and found["preprocess"] / "statistics.json", {})
    history = _json(found["train"] and found["train"] / "history.json", {})
    pictures: dict[str, bytes] = {}
    if statistics:
        pictures["class_distribution.png"] = class_histograms(statistics)
        pictures["pixel_distribution.png"] = pixel_histograms(statistics)
    if history:
        pictures["training_curves.png"] = training_curves(history)
    evaluation = found["evaluate"]
    for name in EVALUATE_PICTURES:
        if evaluation and (evaluation / name).is_file():
            pictures[name] = (evaluation / name).read_bytes()

    shown = lineage.show_run(run_dir)
    for name, component in shown["components"].items():
        reused_from = component["from_run"]
        component["report"] = (f"../{reused_from}/report.html"
                               if reused_from and reused_from != run_dir.name else None)
    html = TEMPLATES.get_template("report.html.j2").render(
        run=shown, record=record, statistics=statistics,
        anomalies=_json(found["validate"] and found["validate"] / "anomalies.json"),
        training=_json(found["train"] and found["train"] / "training.json"),
        metrics=_json(evaluation and evaluation / "metrics.json"),
        classification=_json(evaluation and evaluation / "classification_report.json"),
        worst=json.loads((evaluation / "worst_misclassified.json").read_text())
        if evaluation and (evaluation / "worst_misclassified.json").is_file() else None,
        blessing=_json(evaluation and evaluation / "blessing.json"),
        export=lineage._key_results("export", (_json(found["export"] and found["export"] / "manifest.json", {})
                                               ).get("result") or {}),
        images={name: "data:image/png;base64," + base64.b64encode(data).decode() for name, data in pictures.items()},
    )
    folder = run_dir / "report"
    folder.mkdir(exist_ok=True)
    for name, data in pictures.items():
        write_atomic(folder / name, data)
    return write_atomic(run_dir / "report.html", html.encode())


def build_index(artifacts: Path, model_base: Path) -> Path:
    """Writes `<artifacts>/index.html`: every run and every served version, linked to their reports."""
    from components import serving  # no TensorFlow: reads push records and folder names

    runs = list(reversed(lineage.runs(artifacts)))
    for row in runs:
        row["report"] = f"runs/{row['run']}/report.html" if (Path(artifacts) / "runs" / row["run"] / "report.html").is_file() else None
    versions = list(reversed(serving.listing(model_base))) if Path(model_base).is_dir() else []
    for version in versions:
        run = version.get("run")
        version["report"] = f"runs/{run}/report.html" if run and (Path(artifacts) / "runs" / run / "report.html").is_file() else None
    html = TEMPLATES.get_template("index.html.j2").render(runs=runs, versions=versions, model_base=str(model_base))
    return write_atomic(Path(artifacts) / "index.html", html.encode())


def build_all(run_dir: Path, artifacts: Path, model_base: Path) -> list[Path]:
    """The run's report and the index; a failure is a warning, never the run's failure."""
    try:
        return [build_report(run_dir), build_index(artifacts, model_base)]
    except Exception as err:  # the report describes the run; it must never fail it
        log.warning("could not write the report of %s: %s", Path(run_dir).name, err)
        return []
