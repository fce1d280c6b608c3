"""The model card of a model about to be served: `model_card.html` and its Markdown twin.

Written by export into the SavedModel's `assets.extra/` before the push copies it, so a
served version never appears without its card (TF Serving ignores `assets.extra`, and so
does the served model's digest). Everything on the card is read from the run's own
records: ingest.json (the data), training.json (the settings), evaluate's metrics,
classification report, confusion matrix and blessing. The HTML is one self-contained
file: inline style, the errors-only confusion matrix embedded as a PNG, no scripts.
Every value from outside (settings, paths, reasons) is escaped: autoescape is always on.
"""
from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path

import jinja2

from components.common.versions import versions_of
from components.serving import UNPUSHED

HTML, MARKDOWN = "model_card.html", "model_card.md"
PACKAGES = ("mnist-pipeline", "tensorflow", "keras", "numpy", "tensorflow-datasets", "apache-beam", "scikit-learn",
            "tensorflow-serving-api")
WORST_CONFUSIONS = 5
# Always on, for both files: a `.j2` name would switch select_autoescape() off, and HTML
# entities are valid Markdown too.
TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                               autoescape=True, trim_blocks=True, lstrip_blocks=True)
TEMPLATES.filters["cell"] = lambda value: str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")
TEMPLATES.filters["pct"] = lambda value: f"{value:.2%}" if isinstance(value, (int, float)) else "n/a"


def _json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def worst_confusions(counts: list[list[int]], n: int = WORST_CONFUSIONS) -> list[dict]:
    """The `n` largest off-diagonal cells of a confusion matrix (rows: true labels)."""
    cells = [{"true": t, "predicted": p, "count": c, "share_of_true": c / max(sum(row), 1)}
             for t, row in enumerate(counts) for p, c in enumerate(row) if t != p and c]
    return sorted(cells, key=lambda cell: (-cell["count"], cell["true"], cell["predicted"]))[:n]


def paired_text(pair: dict | None) -> str | None:
    """McNemar's table in words, for one split or slice."""
    if not pair:
        return None
    counts = pair["all"]
    return (f"where the two models disagree, the candidate lost {counts['lost']} and gained {counts['gained']} "
            f"of {counts['images']} images (McNemar p={counts['p_value']:.2g})")


def slice_facts(metrics: dict, pair: dict | None) -> dict:
    """A slice's line of the card, formatted as the test split's figures are."""
    served = metrics.get("baseline")
    return {"images": metrics["candidate"].get("examples"), "accuracy": f"{metrics['candidate']['accuracy']:.2%}",
            "served accuracy": f"{served['accuracy']:.2%}" if served else "-",
            **({"paired": paired_text(pair)} if pair else {})}


def facts(*, model: Path, evaluation: Path, examples: Path, push_record: dict, model_name: str) -> dict:
    """What the card says, gathered from the run's records."""
    model, evaluation, examples = Path(model), Path(evaluation), Path(examples)
    report = _json(evaluation / "classification_report.json")
    per_class = [{"digit": d, **{k.replace("-", "_"): v for k, v in report[d].items()}}
                 for d in map(str, range(10)) if isinstance(report.get(d), dict)]
    metrics = _json(evaluation / "metrics.json")
    matrix = _json(evaluation / "confusion_matrix.json").get("counts") or []
    picture = evaluation / "confusion_matrix_errors.png"
    blessing = _json(evaluation / "blessing.json")
    return {
        "model_name": model_name,
        "run": push_record.get("run"),
        "model_fingerprint": push_record.get("model_fingerprint"),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": _json(examples / "ingest.json"),
        "training": _json(model / "training.json"),
        "metrics": metrics,
        "per_class": per_class,
        "macro": report.get("macro avg"),
        "worst_confusions": worst_confusions(matrix),
        # Named slices besides the test split (the users' held-out images), both models on the same images.
        "slices": {name: slice_facts(s, (blessing.get("paired") or {}).get(name))
                   for name, s in (blessing.get("slices") or {}).items() if name != "test"},
        "served_as": UNPUSHED,  # push writes the number in (serving.stamp_card)
        "blessing": blessing,
        "paired": paired_text((blessing.get("paired") or {}).get("test")),
        "versions": versions_of(PACKAGES),
        "errors_png": ("data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode())
        if picture.is_file() else None,
    }


def write(folder: Path, **sources) -> dict[str, Path]:
    """Writes both files into `folder` (a SavedModel's assets.extra); returns their paths."""
    card = facts(**sources)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in (HTML, MARKDOWN):
        path = folder / name
        path.write_text(TEMPLATES.get_template(f"{name}.j2").render(card=card))
        written[name] = path
    return written
