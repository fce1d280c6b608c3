"""The run report (`<run>/report.html`) and the index of runs (`<artifacts>/index.html`).

Both are rendered from the store's records with Jinja2 and are self-contained: every
picture is embedded as a PNG data URI (and also kept as a file in `<run>/report/`), the
style is inline, nothing is fetched, so a report opens from disk or as a mail attachment.
The pictures that need the model or the images come from evaluate; this module draws
only from JSON, and imports no TensorFlow. A picture of an output is drawn once, by the
report of the run that made the output; a run that reused the output reuses its picture
(the same records draw the same picture), so a fully cached run imports no matplotlib.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
from pathlib import Path

import jinja2
import numpy as np

from pipeline import lineage
from pipeline.console import printable
from pipeline.graph import STEPS
from pipeline.store import ArtifactStore, Run, read_json, write_atomic

log = logging.getLogger("pipeline")
# Always on: select_autoescape() decides by the last extension, `.j2`, which turned it off.
# Settings, paths, error text and file names in a report come from outside.
TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"), autoescape=True)
TEMPLATES.filters["printable"] = printable  # a newline or an escape sequence in a name shows as `\n`, `\x1b`
EVALUATE_PICTURES = ("confusion_matrix.png", "confusion_matrix_errors.png", "worst_misclassified.png")  # as declared
PICTURES = "report"  # <run>/report/: each picture of the report as a file


def _figure(**size):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state; only to draw

    return Figure(**size)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def training_curves(history: dict) -> bytes:
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize=(10, 3.6))
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
    fig = _figure(figsize=(10, 3.2))
    ax = fig.subplots()
    splits = [s for s in ("train", "validation", "test") if s in statistics]
    width = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
        hist = statistics[split]["class_histogram"]
        total = max(sum(hist.values()), 1)
        ax.bar(np.arange(10) + i * width, [hist[str(c)] / total for c in range(10)], width, label=split)
    ax.set(xticks=np.arange(10) + width * (len(splits) - 1) / 2, xticklabels=range(10), xlabel="digit",
           ylabel="share of split", title="Class distribution per split")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars: inside, it hid those of 8 and 9
    return _png(fig)


def pixel_histograms(statistics: dict) -> bytes:
    fig = _figure(figsize=(10, 3.2))
    ax = fig.subplots()
    for split in ("train", "validation", "test"):
        bins = statistics.get(split, {}).get("pixel_histogram")
        if bins:
            ax.plot((np.arange(len(bins)) + 0.5) / len(bins), bins, marker="o", ms=3, label=split)
    ax.set(yscale="log", xlabel="scaled pixel intensity", ylabel="share of pixels (log)",
           title="Pixel-intensity distribution per split")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def _drawn_once(run: Run, component: str, records: dict, drawings: dict) -> dict[str, bytes]:
    """The pictures of `component`'s output: those the report of the run that made the output
    drew, where this run reused it; drawn from `records` otherwise (or if that report has none)."""
    output = lineage.artifact(run, component)
    made_by = output.parent if output and output.parent != run.path else None
    pictures = {}
    for name, draw in drawings.items():
        earlier = made_by / PICTURES / name if made_by else None
        pictures[name] = earlier.read_bytes() if earlier and earlier.is_file() else draw(records)
    return pictures


def _file(run: Run, component: str, what: str) -> Path | None:
    """A file people open in a step's output, by what its declaration calls it."""
    path = lineage.artifact(run, component)
    name = STEPS[component].files[what]
    return path / name if path and (path / name).is_file() else None


def _opened(run: Run, component: str, what: str):
    path = _file(run, component, what)
    return read_json(path) if path else None


def build_report(run_dir: Path) -> Path:
    """Writes `<run>/report.html` and `<run>/report/*.png` from what the run has; returns the html path."""
    run_dir = Path(run_dir)
    store = ArtifactStore(run_dir.parent.parent)
    run = store.run(run_dir.name)
    ingest, statistics, anomalies, training, blessing, export = (
        lineage.result(run, name) for name in ("ingest", "preprocess", "validate", "train", "evaluate", "export"))
    history = _opened(run, "train", "history") or {}
    pictures: dict[str, bytes] = {}
    if statistics:
        pictures.update(_drawn_once(run, "preprocess", statistics, {"class_distribution.png": class_histograms,
                                                                    "pixel_distribution.png": pixel_histograms}))
    if history:
        pictures.update(_drawn_once(run, "train", history, {"training_curves.png": training_curves}))
    for name in EVALUATE_PICTURES:
        if _file(run, "evaluate", name):
            pictures[name] = _file(run, "evaluate", name).read_bytes()

    shown = lineage.show_run(store.root, run.id)
    for name, component in shown["components"].items():
        reused_from = component["from_run"]
        component["report"] = f"../{reused_from}/report.html" if reused_from and reused_from != run.id else None
    worst = _file(run, "evaluate", "worst_misclassified")
    html = TEMPLATES.get_template("report.html.j2").render(
        run=shown, record=run.record, ingest=ingest, statistics=statistics, anomalies=anomalies or None,
        training=training or None, metrics=_opened(run, "evaluate", "metrics"),
        classification=_opened(run, "evaluate", "classification_report"),
        worst=json.loads(worst.read_text()) if worst else None,  # a list, not a record
        blessing=blessing or None, export=STEPS["export"].summary(export),
        pushed=lineage.pushed_version(run, lineage.pushes(store.root)),
        images={name: "data:image/png;base64," + base64.b64encode(data).decode() for name, data in pictures.items()},
    )
    folder = run_dir / PICTURES
    folder.mkdir(exist_ok=True)
    for name, data in pictures.items():
        write_atomic(folder / name, data)
    return write_atomic(run_dir / "report.html", html.encode())


def build_index(artifacts: Path, model_base: Path) -> Path:
    """Writes `<artifacts>/index.html`: every run and every served version, linked to their reports,
    and every inference folder, linked to its review page."""
    from components import serving  # no TensorFlow: reads push records and folder names

    store = ArtifactStore(artifacts)
    reports = {run.id: f"runs/{run.id}/report.html" for run in store.runs() if (run.path / "report.html").is_file()}
    runs = list(reversed(lineage.runs(artifacts)))
    for row in runs:
        row["report"] = reports.get(row["run"])
    versions = list(reversed(serving.listing(model_base))) if Path(model_base).is_dir() else []
    for version in versions:
        version["report"] = reports.get(version.get("run"))
        if version.get("model_card"):  # relative, so the index opens from disk or over HTTP alike
            version["model_card"] = Path(os.path.relpath(Path(model_base) / version["model_card"], artifacts)).as_posix()
    html = TEMPLATES.get_template("index.html.j2").render(runs=runs, versions=versions, model_base=str(model_base),
                                                         inferences=inference_rows(store))
    return write_atomic(Path(artifacts) / "index.html", html.encode())


def build_all(run_dir: Path, artifacts: Path, model_base: Path) -> list[Path]:
    """The run's report and the index; a failure is a warning, never the run's failure."""
    try:
        return [build_report(run_dir), build_index(artifacts, model_base)]
    except Exception as err:  # the report describes the run; it must never fail it
        log.warning("could not write the report of %s: %s", Path(run_dir).name, err)
        return []


def inference_rows(store: ArtifactStore) -> list[dict]:
    """Each inference folder, newest first, from its manifest: counts and a link to its review page."""
    from pipeline.store import MANIFEST

    rows = []
    for folder in reversed(store.inferences()):
        manifest = read_json(folder / MANIFEST)
        result = manifest.get("result") or {}
        page = folder / "review.html"  # relative, like the reports' links
        rows.append({"id": folder.name, "started_at": manifest.get("started_at"),
                     **{k: result.get(k) for k in ("images", "queued", "already_known", "bad")},
                     "review": f"inference/{folder.name}/{page.name}" if page.is_file() else None})
    return rows
