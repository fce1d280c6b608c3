"""`<artifacts>/inference/<id>/review.html`: an inference's review queue on one page.

For each queued image: the picture as the model read it (greyscale, bounded in size) and in
MNIST form (28x28, scaled up), the predicted digit, the top 3 probabilities, why it is queued,
the file's original name, where it waits (`review/<digit>/<name>`) and where a person moves it
(`<ingest.extra_dir>/<correct digit>/`, which the next night trains on). Also the images that
were doubtful but not queued again, and why. Self-contained like the run report: pictures are
PNG data URIs, the style is inline, no scripts, nothing fetched. Names from outside are shown
with control characters escaped and are HTML-escaped (autoescape on). No TensorFlow here.
"""
from __future__ import annotations

import base64
import heapq
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from components.common.digits import FIELD, ImageError, load_image, to_mnist
from pipeline.report import TEMPLATES  # autoescape on, and `printable`
from pipeline.store import read_json, write_atomic

PAGE = "review.html"
SHOWN_MAX = 500  # queued images on the page; the rest are counted (a night's page stays a few MB)
NOT_QUEUED_SHOWN_MAX = 500  # rows of the images not queued again
MNIST_SCALE = 4  # 28x28 shown as 112x112, each pixel a block: what the model saw, visibly
ORIGINAL_MAX = 160  # px, the longer side of the picture as read
RECORD = re.compile(r"\.tfrecord#[0-9a-f]{12}$")  # how components/infer.py names a record's example


def build_review(folder: Path, inference_id: str, extra_dir: str | Path | None) -> Path:
    """Writes `<folder>/review.html` from the folder's predictions.jsonl and summary.json."""
    folder = Path(folder)
    predictions = folder / "predictions.jsonl"
    queued, queued_count = _smallest(_lines_with(predictions, "queued"), SHOWN_MAX,
                                     key=lambda p: (p["digit"], p["queued"]))
    not_queued, not_queued_count = _smallest(_lines_with(predictions, "not_queued"), NOT_QUEUED_SHOWN_MAX,
                                             key=lambda p: p["file"])
    html = TEMPLATES.get_template("review.html.j2").render(
        inference_id=inference_id, summary=read_json(folder / "summary.json"),
        extra_dir=str(Path(extra_dir).absolute()) if extra_dir else None,
        queued=[_queued_entry(folder, p) for p in queued], queued_more=queued_count - len(queued),
        not_queued=not_queued, not_queued_more=not_queued_count - len(not_queued),
    )
    return write_atomic(folder / PAGE, html.encode())


def _lines_with(predictions: Path, field: str) -> Iterator[dict]:
    """The prediction lines that have `field`, read one at a time."""
    with open(predictions) as lines:
        for line in lines:
            prediction = json.loads(line)
            if prediction.get(field):
                yield prediction


def _smallest(items: Iterable[dict], limit: int, key: Callable) -> tuple[list[dict], int]:
    """The first `limit` of `items` in `key` order, and how many there were: holds `limit`, not all."""
    count = 0

    def counted():
        nonlocal count
        for item in items:
            count += 1
            yield item

    return heapq.nsmallest(limit, counted(), key=key), count


def _queued_entry(folder: Path, prediction: dict) -> dict:
    """What the page shows of one queued image."""
    name = Path(RECORD.sub("", prediction["file"])).name if RECORD.search(prediction["file"]) \
        else Path(prediction["file"]).name
    entry = {**prediction, "name": name, "queued_name": Path(prediction["queued"]).name,
             "mnist": None, "original": None, "unreadable": None}
    try:
        entry.update(_pictures(folder / prediction["queued"], record=bool(RECORD.search(prediction["file"]))))
    except ImageError as err:  # moved by a person already, or changed since it was queued
        entry["unreadable"] = str(err)
    return entry


def _pictures(queued: Path, *, record: bool) -> dict:
    """The queued file as data URIs: its MNIST form scaled up and, for a picture, the picture as
    read, bounded. A record's queued PNG is its MNIST form already."""
    gray = load_image(queued)
    if record:
        return {"mnist": _data_uri(_scaled_up(gray))}
    original = Image.fromarray(gray)
    original.thumbnail((ORIGINAL_MAX, ORIGINAL_MAX))
    return {"mnist": _data_uri(_scaled_up(to_mnist(gray))), "original": _data_uri(original)}


def _scaled_up(pixels: np.ndarray) -> Image.Image:
    side = FIELD * MNIST_SCALE
    return Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST)


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
