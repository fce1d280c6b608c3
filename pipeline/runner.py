"""Runs components in order over the artifact store: which inputs, where outputs go, manifests."""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from pipeline.config import Config
from pipeline.store import MANIFEST, ArtifactStore, now

log = logging.getLogger("pipeline")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOGGERS = ("pipeline", "components")  # ours; library chatter stays out of run.log
PACKAGES = ("tensorflow", "keras", "tensorflow-datasets", "apache-beam", "scikit-learn", "numpy")


class MissingInputError(RuntimeError):
    """A component's upstream artifact does not exist yet."""


@dataclass(frozen=True)
class Step:
    name: str  # also its directory in a run
    output: str  # the entry point's argument naming the output artifact
    inputs: dict[str, str]  # entry-point argument -> upstream component
    params: Callable[[Config, "RunContext"], dict]  # the rest of the entry point's arguments

    @property
    def module(self):
        return importlib.import_module(f"components.{self.name}")


@dataclass(frozen=True)
class RunContext:
    run_id: str
    serving_root: Path


def _baseline(ctx: RunContext, cfg: Config) -> str | None:
    from components import serving

    base = ctx.serving_root / cfg.export.model_name
    version = serving.current_version(base)
    return str(base / str(version)) if version is not None else None


STEPS: dict[str, Step] = {
    step.name: step
    for step in (
        Step("ingest", "examples", {}, lambda cfg, ctx: cfg.ingest.model_dump()),
        Step("preprocess", "transformed", {"examples": "ingest"}, lambda cfg, ctx: cfg.preprocess.model_dump()),
        Step("train", "model", {"transformed": "preprocess"}, lambda cfg, ctx: {**cfg.train.model_dump(), "seed": cfg.seed}),
        Step(
            "evaluate", "evaluation", {"model": "train", "examples": "ingest"},
            lambda cfg, ctx: {**cfg.evaluate.model_dump(), "baseline": _baseline(ctx, cfg)},
        ),
        Step(
            "export", "exported", {"model": "train", "evaluation": "evaluate", "examples": "ingest"},
            lambda cfg, ctx: {
                "serving_root": str(ctx.serving_root),
                "model_name": cfg.export.model_name,
                "verify_examples": cfg.export.verify_examples,
                "push_record": {"run": ctx.run_id},
            },
        ),
    )
}


def serving_root(cfg: Config, artifacts: Path) -> Path:
    return Path(cfg.export.serving_root) if cfg.export.serving_root else Path(artifacts) / "serving"


def model_base(cfg: Config, artifacts: Path) -> Path:
    """Where this model's versions are served: `<serving root>/<model name>`."""
    return serving_root(cfg, artifacts) / cfg.export.model_name


def run(cfg: Config, artifacts: Path, components: list[str] | None = None) -> Path:
    """Run `components` (default: all, in order) as one new run; return its directory."""
    store = ArtifactStore(artifacts)
    names = list(STEPS) if not components else components
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise ValueError(f"unknown component {unknown[0]!r}; choose one of {', '.join(STEPS)}")
    _check_inputs(store, names)

    run_dir = store.new_run({"components_requested": names, "config": cfg.model_dump()})
    handler = _log_to(run_dir / "run.log")
    ctx = RunContext(run_dir.name, serving_root(cfg, artifacts))
    log.info("run %s started in %s", run_dir.name, run_dir)
    produced: dict[str, Path] = {}
    try:
        for name in names:
            produced[name] = _run_step(store, run_dir, STEPS[name], cfg, ctx, produced)
        store.update_run(run_dir, status="succeeded", finished_at=now())
        log.info("run %s succeeded", run_dir.name)
    except BaseException as err:
        store.update_run(run_dir, status="failed", finished_at=now(), error=str(err))
        raise
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        handler.close()
    return run_dir


def _check_inputs(store: ArtifactStore, names: list[str]) -> None:
    missing: list[str] = []

    def need(component: str) -> None:
        for upstream in STEPS[component].inputs.values():
            if upstream not in names and upstream not in missing and store.latest(upstream) is None:
                need(upstream)
                missing.append(upstream)

    for name in names:
        need(name)
    if missing:
        order = [n for n in STEPS if n in missing]
        first = " && ".join(f"python -m pipeline run {n}" for n in order)
        raise MissingInputError(
            f"{names[0]} needs the output of {', '.join(order)}, and {store.runs} has none; "
            f"run it first ({first}) or run the whole pipeline (python -m pipeline run)"
        )


def _run_step(store, run_dir: Path, step: Step, cfg: Config, ctx: RunContext, produced: dict) -> Path:
    inputs = {
        arg: produced[upstream] if upstream in produced else store.latest(upstream).path
        for arg, upstream in step.inputs.items()
    }
    params = step.params(cfg, ctx)
    input_fingerprints = {arg: _fingerprint_of(path) for arg, path in inputs.items()}
    store.update_run(run_dir, step.name, status="running", started_at=now())
    log.info("%s started", step.name)
    started, started_at = time.perf_counter(), now()
    try:
        with store.staging(run_dir, step.name) as scratch:
            entry_point = getattr(step.module, step.name)
            result = entry_point(**{k: Path(v) for k, v in inputs.items()}, **{step.output: scratch}, **params)
            duration = round(time.perf_counter() - started, 2)
            manifest = {
                "component": step.name,
                "run_id": run_dir.name,
                "status": "succeeded",
                "parameters": params,
                "inputs": {arg: str(path) for arg, path in inputs.items()},
                "input_fingerprints": input_fingerprints,
                "fingerprint": _fingerprint(step, params, input_fingerprints),
                "started_at": started_at,
                "finished_at": now(),
                "duration_s": duration,
                "result": result,
                "versions": _versions(),
            }
            (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    except BaseException as err:
        duration = round(time.perf_counter() - started, 2)
        store.update_run(run_dir, step.name, status="failed", duration_s=duration, error=str(err))
        log.error("%s failed after %.1fs: %s", step.name, duration, err)
        raise
    store.update_run(run_dir, step.name, status="succeeded", duration_s=duration)
    log.info("%s succeeded in %.1fs", step.name, duration)
    return run_dir / step.name


def _fingerprint_of(artifact: Path) -> str:
    return json.loads((Path(artifact) / MANIFEST).read_text())["fingerprint"]


def _code_digest(module) -> str:
    # The step's own module and every project module it uses: a change to shared code
    # (the scaling, the presets) changes the fingerprint of each step that depends on it.
    seen = {module.__name__: module}
    for value in vars(module).values():
        owner = value if inspect.ismodule(value) else inspect.getmodule(value)
        if owner is not None and owner.__name__.startswith("components."):
            seen[owner.__name__] = owner
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(Path(inspect.getfile(seen[name])).read_bytes())
    return digest.hexdigest()


def _fingerprint(step: Step, params: dict, input_fingerprints: dict[str, str]) -> str:
    payload = {"code": _code_digest(step.module), "params": params, "inputs": input_fingerprints}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def configure_logging() -> None:
    """INFO to stderr for our loggers; the libraries' INFO is per-bundle detail, not progress."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    for noisy in ("apache_beam", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _log_to(path: Path) -> logging.Handler:
    """Copies the run's progress into its own run.log, whatever the caller configured."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    return handler
