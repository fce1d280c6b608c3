"""`python -m pipeline infer`: score users' images in batch with a served model, into an
artifact folder of its own (`<artifacts>/inference/<id>/`, with a manifest), as a Beam job
on preprocess's runner and options. The component (`components/infer.py`) does the work;
this module picks the model and the version it replaced, and the folder."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.config import Config
from pipeline.fingerprint import package_versions
from pipeline.predict import resolve_model
from pipeline.runner import model_base, temp_files_in
from pipeline.store import MANIFEST, ArtifactStore, file_records, now, write_json_atomic

log = logging.getLogger("pipeline")


def previous_version(saved_model: Path, base: Path) -> Path | None:
    """The version a served version replaced, if it is still there: where the two disagree,
    a person should look."""
    from components import serving

    if Path(saved_model).parent != Path(base) or not Path(saved_model).name.isdigit():
        return None  # a SavedModel folder named directly: no history to compare with
    replaced = serving.read_push_record(base, int(Path(saved_model).name)).get("replaces")
    return Path(base) / str(replaced) if replaced in serving.versions(base) else None


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
    with store.staging(store.inference_dir, inference_id) as scratch:
        with temp_files_in(scratch):  # Beam's pipeline temp stays inside, and goes
            summary = infer(inputs, scratch, saved_model=saved_model, previous_model=previous, **parameters)
        write_json_atomic(scratch / MANIFEST, {
            "component": "infer", "id": inference_id, "status": "succeeded",
            "inputs": [str(Path(p).absolute()) for p in inputs], "model": str(saved_model),
            "previous_model": str(previous) if previous else None, "parameters": parameters,
            "started_at": started_at, "finished_at": now(), "duration_s": round(time.perf_counter() - started, 2),
            "result": summary, "files": file_records(scratch), "versions": package_versions(),
        })
    folder = store.inference_dir / inference_id
    log.info("inference %s: %d image(s) scored, %d queued for review in %s, %d bad file(s)", inference_id,
             summary["images"], summary["queued"], folder / "review", summary["bad"])
    return folder
