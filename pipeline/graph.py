"""The step graph: each component, the artifacts it takes and makes, and what identifies its output.

`params` are the entry point's arguments besides its artifacts; `key` is what of them (and
of the world) the output depends on, hashed into the fingerprint with the code and the
inputs' fingerprints. They differ where an argument says *where* something is and the key
must say *what* it is: the served baseline's files, not its path; the source files'
checksums, not the mirror's folder.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.config import Config
from pipeline.fingerprint import file_digest, served_digest, source_content, tree_digest
from pipeline.store import MANIFEST, ArtifactStore, read_json

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Upstream:
    path: Path
    fingerprint: str


@dataclass(frozen=True)
class RunContext:
    run_id: str
    artifacts: Path
    model_base: Path  # <serving root>/<model name>


Params = Callable[[Config, RunContext, dict], dict]


@dataclass(frozen=True)
class Step:
    name: str  # also its directory in a run, and its module in components/
    output: str  # the entry point's argument naming the output artifact
    inputs: dict[str, str]  # entry-point argument -> upstream component
    params: Params  # (config, context, upstream artifacts by argument) -> the rest of the arguments
    key: Params | None = None  # what identifies the output; None: the params themselves
    gate: Callable[[Path, dict], None] | None = None  # (output, result) -> raises to stop the run

    @property
    def module(self) -> str:
        return f"components.{self.name}"


def baseline_version(model_base: Path, model_fingerprint: str) -> Path | None:
    """The served version folder a candidate must beat (`serving.baseline_version`), or None."""
    from components import serving

    version = serving.baseline_version(model_base, model_fingerprint)
    return None if version is None else Path(model_base) / str(version)


def _ingest_key(cfg: Config, ctx: RunContext, upstream: dict) -> dict:
    # Where TFDS reads and caches and where the extra images lie are not what they hold.
    settings = cfg.ingest.model_dump(exclude={"manual_dir", "data_dir", "extra_dir"})
    extra = tree_digest(Path(cfg.ingest.extra_dir)) if cfg.ingest.extra_dir else None
    return {**settings, "source": source_content(cfg.ingest.dataset, cfg.ingest.manual_dir), "extra_images": extra}


class DataAnomalies(RuntimeError):
    """Validation found error-level anomalies: the run stops before training."""


def accepted_statistics(artifacts: Path, current: Path) -> Path | None:
    """The reference for drift: the statistics of the newest data that passed validation,
    other than the data at hand (`current`'s statistics). Data compared with itself would
    give a key that changes on the first re-run, and no drift to find."""
    runs = ArtifactStore(artifacts).runs
    own = file_digest(Path(current) / "statistics.json")
    for run_dir in sorted(runs.iterdir(), reverse=True) if runs.is_dir() else ():
        manifest = read_json(run_dir / "validate" / MANIFEST)
        if manifest and read_json(run_dir / "validate" / "anomalies.json").get("passed"):
            statistics = Path(manifest["inputs"]["transformed"]) / "statistics.json"
            if statistics.is_file() and file_digest(statistics) != own:
                return statistics
    return None


def _validate_params(cfg: Config, ctx: RunContext, upstream: dict) -> dict:
    reference = accepted_statistics(ctx.artifacts, upstream["transformed"].path)
    return {**cfg.validation.model_dump(), "reference": str(reference) if reference else None}


def _validate_key(cfg: Config, ctx: RunContext, upstream: dict) -> dict:
    reference = accepted_statistics(ctx.artifacts, upstream["transformed"].path)
    return {**cfg.validation.model_dump(), "reference": file_digest(reference) if reference else None}


def _stop_on_anomalies(output: Path, anomalies: dict) -> None:
    """Warnings are logged; any error-level anomaly stops the run, one log line each."""
    from components.validate import anomaly_lines

    for line in anomaly_lines(anomalies, "warning"):
        log.warning("data validation warning: %s", line)
    errors = anomaly_lines(anomalies)
    for line in errors:
        log.error("data anomaly: %s", line)
    if errors:
        first = errors[0] if len(errors) == 1 else f"{errors[0]} (and {len(errors) - 1} more)"
        raise DataAnomalies(f"data validation failed, training not started: {first}; "
                            f"every check is in {output / 'anomalies.json'}")


def _evaluate_params(cfg: Config, ctx: RunContext, upstream: dict) -> dict:
    baseline = baseline_version(ctx.model_base, upstream["model"].fingerprint)
    return {**cfg.evaluate.model_dump(), "baseline": str(baseline) if baseline else None}


def _evaluate_key(cfg: Config, ctx: RunContext, upstream: dict) -> dict:
    baseline = baseline_version(ctx.model_base, upstream["model"].fingerprint)
    return {**cfg.evaluate.model_dump(), "baseline": served_digest(baseline)}


def _export_params(cfg: Config, ctx: RunContext, upstream: dict) -> dict:
    return {
        "serving_root": str(ctx.model_base.parent),
        "model_name": cfg.export.model_name,
        "verify_examples": cfg.export.verify_examples,
        "infra_load_timeout_s": cfg.export.infra_load_timeout_s,
        "infra_tries": cfg.export.infra_tries,
        "infra_latency_requests": cfg.export.infra_latency_requests,
        "push_record": {"run": ctx.run_id, "model_fingerprint": upstream["model"].fingerprint},
    }


STEPS: dict[str, Step] = {
    step.name: step
    for step in (
        Step("ingest", "examples", {}, lambda cfg, ctx, up: cfg.ingest.model_dump(), key=_ingest_key),
        Step("preprocess", "transformed", {"examples": "ingest"}, lambda cfg, ctx, up: cfg.preprocess.model_dump()),
        Step("validate", "validation", {"transformed": "preprocess"}, _validate_params, key=_validate_key,
             gate=_stop_on_anomalies),
        Step("train", "model", {"transformed": "preprocess"},
             lambda cfg, ctx, up: {**cfg.train.model_dump(), "seed": cfg.seed}),
        Step("evaluate", "evaluation", {"model": "train", "examples": "ingest"}, _evaluate_params, key=_evaluate_key),
        Step("export", "exported", {"model": "train", "evaluation": "evaluate", "examples": "ingest"},
             # The configured destination, not its resolved path (which moves with the artifacts
             # root), and not the pushing run's id.
             _export_params, key=lambda cfg, ctx, up: cfg.export.model_dump()),
    )
}


def downstream(names: set[str] | list[str]) -> set[str]:
    """`names` and every step that depends on them, directly or not."""
    found = set(names)
    for name, step in STEPS.items():  # STEPS is in dependency order
        if found & set(step.inputs.values()):
            found.add(name)
    return found
