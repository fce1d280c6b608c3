"""Batch inference (TFX's BulkInferrer): a served model scores a folder of users' images as a Beam job.

Inputs: image files of any size, colour or polarity (read and put in MNIST form by the
functions `predict` uses) and TFRecords of raw 28x28 uint8 examples (ingest's format).
Output (`predictions/`):
  `predictions.jsonl`: per image its file, digit, probability and top 3 (and the previous
  version's digit, when one is given);
  `bad_files.jsonl`: every input that is not a usable image, with the reason (never fatal);
  `review/<predicted digit>/<file name>`: the images to ask a person about (top probability
  below `review_below`, or the two versions disagree), laid out as `ingest.extra_dir`
  reads them: moved into the right digit folder there, the next night learns from them;
  `summary.json`: counts, per digit, and what was queued.
An image's content digest (`sha256` on its line) is the sha256 of its file's bytes; a TFRecord
example's is the sha256 of its 784 raw pixels (the bytes of the PNG it is queued as, decoded).
A doubtful image whose digest the caller already knows (`known`: labelled, or waiting in an
earlier queue) is scored but not queued again; its line says why (`not_queued`).
Images stream through in batches: no step holds more than a bundle, whatever the count.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from components.common.digits import IMAGE_SUFFIXES, ImageError, load_image, to_mnist

TOP = 3
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def sources(inputs: list[Path]) -> tuple[list[str], list[str], list[dict]]:
    """(image files, TFRecord files, bad inputs) named by `inputs`: files, or folders searched
    recursively (hidden files left out). Anything else (another kind of file, a FIFO, a
    missing path) is a bad input, listed and never opened."""
    images, tfrecords, bad = [], [], []
    for path in map(Path, inputs):
        found = sorted(p for p in path.rglob("*") if not p.is_dir() and not p.name.startswith(".")) \
            if path.is_dir() else [path]
        for file in found:
            if not file.is_file():
                bad.append({"file": str(file), "reason": "not a regular file" if file.exists() else "no such file"})
            elif file.suffix == ".tfrecord":
                tfrecords.append(str(file))
            elif file.suffix.lower() in IMAGE_SUFFIXES or not path.is_dir():
                images.append(str(file))  # a file named directly is tried whatever its suffix
            else:
                bad.append({"file": str(file), "reason": f"not an image file ({file.suffix or 'no suffix'})"})
    return images, tfrecords, bad


def file_digest(path: Path) -> str:
    """An image file's content digest: the sha256 of its bytes, read a chunk at a time."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def pixels_digest(pixels: np.ndarray) -> str:
    """A record's content digest: the sha256 of its raw uint8 pixels, row by row. A record has no
    file of its own, and the PNG it is queued as decodes back to these very bytes."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


class _ReadImage(beam.DoFn):
    def process(self, path: str):
        try:
            image = to_mnist(load_image(Path(path)))  # first: it says why a file is no image
            yield {"file": path, "image": image, "sha256": file_digest(Path(path))}
        except ImageError as err:
            yield beam.pvalue.TaggedOutput("bad", {"file": path, "reason": str(err)})
        except OSError as err:  # gone or unreadable between decoding and hashing
            yield beam.pvalue.TaggedOutput("bad", {"file": path, "reason": f"unreadable ({err.strerror or err})"})


def _from_record(element: tuple[str, bytes]) -> dict:
    from components.common.records import parse_example

    filename, record = element
    pixels, _ = parse_example(record)
    # A record has no name of its own: its file and a digest of its bytes name it.
    return {"file": f"{filename}#{hashlib.sha256(record).hexdigest()[:12]}", "image": pixels.reshape(28, 28),
            "sha256": pixels_digest(pixels), "record": True}


class _Predict(beam.DoFn):
    """Each batch through the SavedModel's serving signature (and the previous version's),
    loaded once per worker."""

    def __init__(self, saved_model: str, previous_model: str | None, review_below: float):
        self.saved_model, self.previous_model, self.review_below = saved_model, previous_model, review_below

    def setup(self):
        from components.serving.client import serving_function

        self.predict = serving_function(Path(self.saved_model))
        self.previous = serving_function(Path(self.previous_model)) if self.previous_model else None

    def process(self, batch: list[dict]):
        images = np.stack([e["image"] for e in batch]).astype(np.uint8)
        probabilities = self.predict(images)
        previous = self.previous(images).argmax(axis=1) if self.previous else None
        for i, element in enumerate(batch):
            p = probabilities[i]
            top = np.argsort(-p, kind="stable")[:TOP]
            digit = int(top[0])
            reasons = []
            if p[digit] < self.review_below:
                reasons.append(f"probability {p[digit]:.3f} below infer.review_below {self.review_below}")
            if previous is not None and int(previous[i]) != digit:
                reasons.append(f"the previous version reads {int(previous[i])}")
            yield {"file": element["file"], "sha256": element["sha256"], "digit": digit,
                   "probability": round(float(p[digit]), 6),
                   "top3": [{"digit": int(d), "probability": round(float(p[d]), 6)} for d in top],
                   **({"previous_digit": int(previous[i])} if previous is not None else {}),
                   "review": "; ".join(reasons) or None,
                   **({"image": element["image"]} if reasons and element.get("record") else {})}


class _Queue(beam.DoFn):
    """Copies a doubtful image to `review/<digit>/<name>`: the original file as the user sent
    it, or a PNG of a record's pixels; unless its content is known already (`known`: digest ->
    why), which its line then says instead: a person labels each picture once."""

    def __init__(self, review: str, known: dict[str, str]):
        self.review, self.known = review, known

    def process(self, prediction: dict):
        if prediction["review"] and prediction["sha256"] in self.known:
            prediction = {**prediction, "not_queued": self.known[prediction["sha256"]]}
        elif prediction["review"]:
            folder = Path(self.review) / str(prediction["digit"])
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / queued_name(prediction["file"], record="image" in prediction)
            if "image" in prediction:
                from PIL import Image

                Image.fromarray(prediction["image"]).save(target)
            else:
                shutil.copyfile(prediction["file"], target)
            prediction = {**prediction, "queued": str(target.relative_to(Path(self.review).parent))}
        prediction.pop("image", None)
        yield prediction


def queued_name(source: str, *, record: bool = False) -> str:
    """A file name from outside, made safe for the queue: its own base name only (no folders,
    no leading dot, nothing but letters, digits, `.`, `_`, `-`), with a digest of where it came
    from, so two files of one name never overwrite each other."""
    name = Path(source.rsplit("#", 1)[0] if record else source).name
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    stem = SAFE_NAME.sub("_", stem).lstrip(".")[:80] or "image"
    suffix = "png" if record else SAFE_NAME.sub("_", suffix)[:10] or "img"
    return f"{stem}-{hashlib.sha256(source.encode()).hexdigest()[:8]}.{suffix}"


def infer(inputs: list[Path], predictions: Path, *, saved_model: Path, previous_model: Path | None = None,
          review_below: float = 0.9, batch_size: int = 256, runner: str = "FnApiRunner",
          pipeline_options: list[str] | tuple[str, ...] = (), known: dict[str, str] | None = None) -> dict:
    """Score every image of `inputs` with `saved_model`; write `predictions/`; return summary.json.
    `known`: content digests (see the module's doc) of images a person has or will have labelled,
    each with the reason its line gives for not queueing it again."""
    out = Path(predictions).absolute()
    out.mkdir(parents=True, exist_ok=True)
    images, tfrecords, bad = sources(inputs)
    options = PipelineOptions([f"--runner={runner}", *pipeline_options])
    with beam.Pipeline(options=options) as pipeline:
        read = (pipeline | "image files" >> beam.Create(images) | "read images" >> beam.ParDo(_ReadImage())
                .with_outputs("bad", main="good"))
        records = (pipeline | "tfrecord files" >> beam.Create(tfrecords)
                   | "read records" >> beam.io.ReadAllFromTFRecord(with_filename=True)
                   | "parse records" >> beam.Map(_from_record))
        scored = ((read.good, records) | beam.Flatten()
                  | beam.BatchElements(min_batch_size=min(32, batch_size), max_batch_size=batch_size)
                  | "predict" >> beam.ParDo(_Predict(str(Path(saved_model).absolute()),
                                                     str(Path(previous_model).absolute()) if previous_model else None,
                                                     review_below))
                  | "queue for review" >> beam.ParDo(_Queue(str(out / "review"), dict(known or {}))))
        _ = (scored | "predictions as json" >> beam.Map(json.dumps)
             | "write predictions" >> beam.io.WriteToText(str(out / ".predictions"), file_name_suffix=".jsonl"))
        _ = (read.bad | "bad as json" >> beam.Map(json.dumps)
             | "write bad" >> beam.io.WriteToText(str(out / ".bad"), file_name_suffix=".jsonl"))
    summary = {"model": str(saved_model), "previous_model": str(previous_model) if previous_model else None,
               "review_below": review_below, "images": 0, "per_digit": {str(d): 0 for d in range(10)},
               "queued": 0, "already_known": 0, "bad": len(bad)}
    with open(out / "predictions.jsonl", "w") as joined:  # Beam's shards joined, a line at a time
        for shard in sorted(out.glob(".predictions*.jsonl")):
            for line in shard.open():
                prediction = json.loads(line)
                summary["images"] += 1
                summary["per_digit"][str(prediction["digit"])] += 1
                summary["queued"] += "queued" in prediction
                summary["already_known"] += "not_queued" in prediction  # doubtful, but labelled or queued before
                joined.write(line)
            shard.unlink()
    with open(out / "bad_files.jsonl", "w") as joined:
        for entry in bad:
            joined.write(json.dumps(entry) + "\n")
        for shard in sorted(out.glob(".bad*.jsonl")):
            for line in shard.open():
                summary["bad"] += 1
                joined.write(line)
            shard.unlink()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
