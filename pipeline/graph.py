"""The step graph: each step declared once, as a TFX component spec or a Kedro node is.

A `Step` says what the runner, lineage, the nightly and the report need to know of it:
its inputs and output (the entry point's artifact arguments), `configure` (its other
arguments, `params`, and what identifies its output, `key`, derived together so that every
lookup happens once), `content` (what its output holds, digested as it is written, so that
a step that executes again and makes the same content leaves everything after it cached),
`summary` (the few results `runs`, `show`, the nightly and the report display), the files
people open in its output, whether it resumes from a backup, and any set-up it needs
before TensorFlow starts.

`params` and `key` differ where an argument says *where* something is and the key must
say *what* it is: the served baseline's files, not its path; the source files'
checksums, not the mirror's folder.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.config import Config
from pipeline.fingerprint import files_digest, records_digest, served_digest, source_content, tree_digest
from pipeline.store import ArtifactStore

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Upstream:
    path: Path
    fingerprint: str  # what made it: code, key, inputs
    content: str  # what it holds: downstream keys use this


@dataclass(frozen=True)
class RunContext:
    run_id: str
    store: ArtifactStore
    model_base: Path  # <serving root>/<model name>


Configure = Callable[[Config, RunContext, dict], tuple[dict, dict]]  # -> (params, key)


def _all_files(output: Path, files: dict) -> str:
    return files_digest(files)


@dataclass(frozen=True)
class Step:
    name: str  # also its directory in a run, and its module in components/
    output: str  # the entry point's argument naming the output artifact
    inputs: dict[str, str]  # entry-point argument -> upstream step
    configure: Configure
    summary: Callable[[dict], dict]  # a manifest's result -> what `show`, the nightly and the report display
    content: Callable[[Path, dict], str] = _all_files  # (output, its file records) -> content digest
    files: dict[str, str] = field(default_factory=dict)  # what people open in the output, by what it is
    resumes: bool = False  # backs up its progress in the store's backup folder for its fingerprint
    prepare: Callable[[Config, list[str]], bool] | None = None  # before TensorFlow; True: never from the cache
    gate: Callable[[Path, dict], None] | None = None  # (output, result) -> raises to stop the run

    @property
    def module(self) -> str:
        return f"components.{self.name}"


def _same(params: dict) -> tuple[dict, dict]:
    return params, params


# --- ingest -----------------------------------------------------------------------------

def _ingest(cfg: Config, ctx: RunContext, upstream: dict) -> tuple[dict, dict]:
    # Where TFDS reads and caches and where the extra images lie are not what they hold.
    settings = cfg.ingest.model_dump(exclude={"manual_dir", "data_dir", "extra_dir"})
    extra = tree_digest(Path(cfg.ingest.extra_dir)) if cfg.ingest.extra_dir else None
    key = {**settings, "source": source_content(cfg.ingest.dataset, cfg.ingest.manual_dir), "extra_images": extra}
    return cfg.ingest.model_dump(), key


def _tfrecords(output: Path, files: dict) -> str:
    # The records downstream reads, in TFDS's fixed order; ingest.json holds local paths.
    return files_digest({name: f for name, f in files.items() if name.endswith(".tfrecord")})


def _ingest_summary(result: dict) -> dict:
    return {name: {"tfds_split": s.get("tfds_split"), "count": s.get("count")}
            for name, s in result.get("splits", {}).items()}


# --- preprocess --------------------------------------------------------------------------

def _preprocess_content(output: Path, files: dict) -> str:
    # Beam lays records out in files as its bundles go: the same records, another layout.
    return records_digest(sorted(Path(output).glob("*.tfrecord")))


def _preprocess_summary(result: dict) -> dict:
    return {name: s.get("count") for name, s in result.items() if isinstance(s, dict) and "count" in s}


# --- validate ----------------------------------------------------------------------------

class DataAnomalies(RuntimeError):
    """Validation found error-level anomalies: the run stops before training."""


EX_DATAERR = 65  # a command's exit status for DataAnomalies: retrying the same data cannot help


def accepted_statistics(store: ArtifactStore, current: Upstream) -> tuple[Path, str] | None:
    """The reference for drift: the statistics of the newest data that passed validation,
    other than the data at hand, with that data's content digest. Data compared with itself
    would give a key that changes on the first re-run, and no drift to find."""
    for run in reversed(store.runs()):
        manifest = store.manifest(run.path / "validate")
        if manifest and (manifest.get("result") or {}).get("passed"):
            data = Path(manifest["inputs"]["transformed"])
            content = (manifest.get("input_digests") or {}).get("transformed")
            if content and content != current.content and (data / "statistics.json").is_file():
                return data / "statistics.json", content
    return None


def _validate(cfg: Config, ctx: RunContext, upstream: dict) -> tuple[dict, dict]:
    reference = accepted_statistics(ctx.store, upstream["transformed"])
    settings = cfg.validation.model_dump()
    return ({**settings, "reference": str(reference[0]) if reference else None},
            {**settings, "reference": reference[1] if reference else None})


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


# --- train -------------------------------------------------------------------------------

def _prepare_training(cfg: Config, names: list[str]) -> bool:
    """Before any step runs (TensorFlow takes both only before its first operation): sizes its
    thread pools for the preset's batch parts, and joins this process to the multi-worker
    training TF_CONFIG describes. Every worker trains, and never from the cache (the others
    wait for it); only the chief goes on."""
    from components.training import distribute
    from components.training.presets import resolve_settings

    distribute.split_threads(resolve_settings(cfg.train.preset).batch_splits)
    if cfg.train.strategy != "multi_worker":
        return False

    cluster, task = distribute.cluster_task()
    after = [n for n in names if n in downstream(["train"]) - {"train"}]
    if after and not distribute.is_chief(cluster, task):
        raise ValueError(f"this process is {task['type']} {task['index']} of a multi-worker training, and only the "
                         f"chief runs {', '.join(after)}; run the train component alone here: {distribute.RUN_WORKER}")
    distribute.strategy("multi_worker")
    return True


# --- evaluate and export -----------------------------------------------------------------

def baseline_version(model_base: Path, model_fingerprint: str) -> Path | None:
    """The served version folder a candidate must beat (`serving.baseline_version`), or None."""
    from components import serving

    version = serving.baseline_version(model_base, model_fingerprint)
    return None if version is None else Path(model_base) / str(version)


def _evaluate(cfg: Config, ctx: RunContext, upstream: dict) -> tuple[dict, dict]:
    baseline = baseline_version(ctx.model_base, upstream["model"].fingerprint)
    settings = cfg.evaluate.model_dump()
    return {**settings, "baseline": str(baseline) if baseline else None}, {**settings, "baseline": served_digest(baseline)}


def _evaluate_summary(result: dict) -> dict:
    slices = {name: {"examples": s["candidate"].get("examples"), "accuracy": s["candidate"].get("accuracy"),
                     "served_accuracy": (s.get("baseline") or {}).get("accuracy")}
              for name, s in (result.get("slices") or {}).items() if name != "test"}
    return {"accuracy": (result.get("candidate") or {}).get("accuracy"), "blessed": result.get("blessed"),
            "reasons": result.get("reasons"), **({"slices": slices} if slices else {})}


def _export(cfg: Config, ctx: RunContext, upstream: dict) -> tuple[dict, dict]:
    params = {
        "serving_root": str(ctx.model_base.parent),
        "model_name": cfg.export.model_name,
        "verify_examples": cfg.export.verify_examples,
        "infra_load_timeout_s": cfg.export.infra_load_timeout_s,
        "infra_tries": cfg.export.infra_tries,
        "infra_latency_requests": cfg.export.infra_latency_requests,
        "push_record": {"run": ctx.run_id, "model_fingerprint": upstream["model"].fingerprint},
    }
    # The configured destination, not its resolved path (which moves with the artifacts
    # root), and not the pushing run's id.
    return params, cfg.export.model_dump()


def _picked(*names: str) -> Callable[[dict], dict]:
    return lambda result: {k: result.get(k) for k in names if k in result}


STEPS: dict[str, Step] = {
    step.name: step
    for step in (
        Step("ingest", "examples", {}, _ingest, _ingest_summary, content=_tfrecords),
        Step("preprocess", "transformed", {"examples": "ingest"}, lambda cfg, ctx, up: _same(cfg.preprocess.model_dump()),
             _preprocess_summary, content=_preprocess_content, files={"statistics": "statistics.json"}),
        Step("validate", "validation", {"transformed": "preprocess"}, _validate,
             _picked("passed", "errors", "warnings"), gate=_stop_on_anomalies),
        Step("train", "model", {"transformed": "preprocess"},
             lambda cfg, ctx, up: _same({**cfg.train.model_dump(), "seed": cfg.seed}),
             _picked("epochs_run", "stop_reason", "train_seconds"), files={"history": "history.json"},
             resumes=True, prepare=_prepare_training),
        Step("evaluate", "evaluation", {"model": "train", "examples": "ingest"}, _evaluate, _evaluate_summary,
             files={"metrics": "metrics.json", "classification_report": "classification_report.json",
                    "worst_misclassified": "worst_misclassified.json",
                    "confusion_matrix.png": "confusion_matrix.png",
                    "confusion_matrix_errors.png": "confusion_matrix_errors.png",
                    "worst_misclassified.png": "worst_misclassified.png"}),
        Step("export", "exported", {"model": "train", "evaluation": "evaluate", "examples": "ingest"}, _export,
             _picked("pushed", "version", "not_pushed_because", "already_served", "infra_validation")),
    )
}


def downstream(names: set[str] | list[str]) -> set[str]:
    """`names` and every step that depends on them, directly or not."""
    found = set(names)
    for name, step in STEPS.items():  # STEPS is in dependency order
        if found & set(step.inputs.values()):
            found.add(name)
    return found


def ancestors(name: str) -> set[str]:
    """Every step whose output `name` reads, directly or not."""
    found: set[str] = set()
    for up in STEPS[name].inputs.values():
        found |= {up} | ancestors(up)
    return found


def upstream_steps(name: str) -> list[str]:
    """What a step waits for as a task of an orchestrator (Airflow, Kubeflow): the steps whose
    outputs it reads, and every gate on data it reads (train waits for validate, whose gate
    stops the run on bad data, as the runner's order does). In the graph's order."""
    before = ancestors(name)
    gates = {g for g, step in STEPS.items() if step.gate and g != name and g not in before
             and name not in ancestors(g) and set(step.inputs.values()) <= before}
    return [n for n in STEPS if n in set(STEPS[name].inputs.values()) | gates]
