"""`python -m pipeline infer`: score users' images in batch with a served model, into an
artifact folder of its own (`<artifacts>/inference/<id>/`, with a manifest), as a Beam job
on preprocess's runner and options. The component (`components/infer.py`) does the work;
this module picks the model and the version it replaced, the folder, and the images a person
has seen already (labelled in `ingest.extra_dir`, or waiting in an earlier review queue), which
are scored but not queued again; then it writes the queue's page (`review.html`) and the index."""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.config import Config
from pipeline.fingerprint import package_versions
from pipeline.predict import resolve_model
from pipeline.runner import model_base, temp_files_in
from pipeline.store import MANIFEST, ArtifactStore, file_records, now, write_json_atomic

log = logging.getLogger("pipeline")
# A bigger file is no picture anyone labels; reading it would only stall the night.
KNOWN_MAX_BYTES = 20 * 2**20
# A record is queued as a 28x28 greyscale PNG of about a kilobyte; such a file is also known by
# its pixels, which is how its record is recognised (components/infer.py, `pixels_digest`).
RECORD_PNG_MAX_BYTES = 64 * 2**10


def previous_version(saved_model: Path, base: Path) -> Path | None:
    """The version a served version replaced, if it is still there: where the two disagree,
    a person should look."""
    from components import serving

    if Path(saved_model).parent != Path(base) or not Path(saved_model).name.isdigit():
        return None  # a SavedModel folder named directly: no history to compare with
    replaced = serving.read_push_record(base, int(Path(saved_model).name)).get("replaces")
    return Path(base) / str(replaced) if replaced in serving.versions(base) else None


def files_inside(root: Path) -> Iterator[tuple[Path, str]]:
    """(path, path relative to `root`) of each regular file under `root` of at most
    KNOWN_MAX_BYTES. Links to folders are not walked into; a link to a file counts only when it
    points inside `root` (what it names elsewhere is none of this folder's content)."""
    root = Path(root)
    if not root.is_dir():
        return
    inside = root.resolve()
    for folder, _, names in os.walk(root, followlinks=False):
        for name in sorted(names):
            path = Path(folder) / name
            try:
                if path.is_symlink() and not path.resolve().is_relative_to(inside):
                    continue
                found = path.stat()
            except (OSError, RuntimeError):  # gone meanwhile, unreadable, or a link loop
                continue
            if stat.S_ISREG(found.st_mode) and found.st_size <= KNOWN_MAX_BYTES:
                yield path, path.relative_to(root).as_posix()


def content_digests(path: Path) -> list[str]:
    """The digests components/infer.py gives an image: the sha256 of the file's bytes, and for a
    28x28 greyscale PNG (a queued record) also that of its pixels. [] if it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    digests = [hashlib.sha256(data).hexdigest()]
    if path.suffix.lower() == ".png" and len(data) <= RECORD_PNG_MAX_BYTES:
        digests += _record_pixels_digest(data)
    return digests


def _record_pixels_digest(png: bytes) -> list[str]:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(png)) as image:
            if image.size != (28, 28) or image.mode != "L":
                return []
            return [hashlib.sha256(image.tobytes()).hexdigest()]
    except Exception:  # noqa: BLE001 - PIL raises many kinds on a broken file; it is then no record
        return []


def known_images(extra_dir: Path | None, inference_folders: list[Path]) -> dict[str, str]:
    """Content digest -> why an image with it is not queued again: a file anywhere under
    `extra_dir` (labelled), or still in the `review/` queue of one of `inference_folders`
    (waiting for a person; once moved into `extra_dir` it is labelled instead). Labelled wins,
    then the oldest queue."""
    known: dict[str, str] = {}
    if extra_dir:
        for path, relative in files_inside(Path(extra_dir)):
            for digest in content_digests(path):
                known.setdefault(digest, f"already labelled in ingest.extra_dir ({relative})")
    for folder in inference_folders:
        for path, relative in files_inside(Path(folder) / "review"):
            for digest in content_digests(path):
                known.setdefault(digest, f"already queued in inference {Path(folder).name} (review/{relative})")
    return known


def run_inference(cfg: Config, artifacts: Path, inputs: list[Path], model: str | None = None) -> Path:
    """Score `inputs` with `model` (a version, a SavedModel folder, or the current version);
    return the inference folder."""
    from components.infer import infer

    store = ArtifactStore(artifacts)
    base = model_base(cfg, artifacts)
    saved_model = resolve_model(model, base)
    previous = previous_version(saved_model, base)
    store.inference_dir.mkdir(parents=True, exist_ok=True)
    inference_id = store.new_id()
    parameters = {"review_below": cfg.infer.review_below, "batch_size": cfg.infer.batch_size,
                  "runner": cfg.preprocess.runner, "pipeline_options": cfg.preprocess.pipeline_options}
    log.info("inference %s: %s with %s%s", inference_id, ", ".join(map(str, inputs)), saved_model,
             f" (compared with {previous})" if previous else "")
    started, started_at = time.perf_counter(), now()
    known = known_images(cfg.ingest.extra_dir or None, store.inferences())
    log.info("inference %s: %d image(s) known already (labelled in ingest.extra_dir or queued before)",
             inference_id, len(known))
    with store.staging(store.inference_dir, inference_id) as scratch:
        with temp_files_in(scratch):  # Beam's pipeline temp stays inside, and goes
            summary = infer(inputs, scratch, saved_model=saved_model, previous_model=previous, known=known,
                            **parameters)
        _write_review_page(scratch, inference_id, cfg.ingest.extra_dir)
        write_json_atomic(scratch / MANIFEST, {
            "component": "infer", "id": inference_id, "status": "succeeded",
            "inputs": [str(Path(p).absolute()) for p in inputs], "model": str(saved_model),
            "previous_model": str(previous) if previous else None, "parameters": parameters,
            "started_at": started_at, "finished_at": now(), "duration_s": round(time.perf_counter() - started, 2),
            "result": summary, "files": file_records(scratch), "versions": package_versions(),
        })
    folder = store.inference_dir / inference_id
    log.info("inference %s: %d image(s) scored, %d queued for review in %s (%s), %d not queued again "
             "(seen before), %d bad file(s)", inference_id, summary["images"], summary["queued"], folder / "review",
             folder / "review.html", summary["already_known"], summary["bad"])
    _refresh_index(artifacts, base)
    return folder


def _write_review_page(folder: Path, inference_id: str, extra_dir: str) -> None:
    """`review.html`, before the manifest lists the folder's files; a failure is a warning:
    the queue itself is there."""
    from pipeline.review import build_review

    try:
        build_review(folder, inference_id, extra_dir)
    except Exception as err:  # noqa: BLE001 - the page helps; it must never lose the scores
        log.warning("inference %s: could not write review.html: %s", inference_id, err)


def _refresh_index(artifacts: Path, base: Path) -> None:
    from pipeline.report import build_index

    try:
        build_index(artifacts, base)
    except Exception as err:  # noqa: BLE001 - as after a run: the index never fails the work
        log.warning("could not refresh %s: %s", Path(artifacts) / "index.html", err)
