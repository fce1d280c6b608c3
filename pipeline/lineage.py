"""`runs` and `show`: the store's records read back as lineage, with no metadata server.

Everything comes from run.json, the manifests (the one record of each result, shown
through each step's declared summary) and the push records; nothing here imports
TensorFlow.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.graph import STEPS
from pipeline.store import MANIFEST, ArtifactStore, Run, read_manifest, run_id_of


def artifact(run: Run, component: str) -> Path | None:
    """The output of `component` as the run used it: its own, or the one the cache reused."""
    entry = run.record.get("components", {}).get(component, {})
    # Through the run that made it: the `reused` path is as the artifacts root was given,
    # relative to wherever that run was started.
    path = run.path.parent / entry["from_run"] / component if entry.get("from_run") else run.path / component
    return path if (path / MANIFEST).is_file() else None


def result(run: Run, component: str) -> dict:
    """What `component` returned for this run, as its manifest records it; {} when it has none."""
    path = artifact(run, component)
    return ((read_manifest(path / MANIFEST) or {}).get("result") or {}) if path else {}


def pushes(artifacts: Path) -> dict[str, int]:
    """Run id -> the version it pushed, from each served version's push record: the one record
    of a push (a run killed right after its push has no export of its own, and a run that
    reused an earlier export pushed nothing). A rollback is no run's push."""
    from components import serving

    found: dict[str, int] = {}
    for base in model_bases(artifacts):
        for version in serving.versions(base):
            record = serving.read_push_record(base, version)
            if record.get("run") and not record.get("rollback_of"):
                found.setdefault(record["run"], version)
    return found


def pushed_version(run: Run, pushed: dict[str, int]) -> int | None:
    """The version `run` pushed: its push record (`pushes`), or, once retention has deleted that
    version, what its own export (executed in this run, not reused) says it pushed."""
    if run.id in pushed:
        return pushed[run.id]
    export = run.record.get("components", {}).get("export", {})
    own = result(run, "export") if export.get("status") == "succeeded" else {}
    return own.get("version") if own.get("pushed") else None


def run_row(run: Run, pushed: dict[str, int]) -> dict:
    ingest, evaluate = (result(run, name) for name in ("ingest", "evaluate"))
    splits = ingest.get("splits", {})
    return {
        "run": run.id,
        "started_at": run.record.get("started_at"),
        "status": run.status,
        "preset": run.record.get("config", {}).get("train", {}).get("preset"),
        "train": splits.get("train", {}).get("count"),
        "test": splits.get("test", {}).get("count"),
        "test_accuracy": STEPS["evaluate"].summary(evaluate).get("accuracy"),
        "pushed": pushed_version(run, pushed),
        "components": {name: c.get("status") for name, c in run.record.get("components", {}).items()},
    }


def runs(artifacts: Path) -> list[dict]:
    pushed = pushes(artifacts)
    return [run_row(run, pushed) for run in ArtifactStore(artifacts).runs()]


def model_bases(artifacts: Path) -> list[Path]:
    """Every model base the runs of this root were set to push to (each run.json's
    `export.serving_root` and `model_name`), newest first: a command run without the same
    `--set` still finds the versions a run pushed elsewhere."""
    store = ArtifactStore(artifacts)
    found: list[Path] = []
    for run in reversed(store.runs()):
        export = run.record.get("config", {}).get("export", {})
        if export.get("model_name"):
            base = store.model_base(export.get("serving_root", ""), export["model_name"])
            found += [] if base in found else [base]
    return found


def served_elsewhere(artifacts: Path, model_base: Path) -> list[Path]:
    """The model bases other than `model_base` that runs of this root pushed versions to."""
    from components import serving

    here = Path(model_base).resolve()
    return [base for base in model_bases(artifacts) if base.resolve() != here and serving.versions(base)]


def elsewhere_hint(base: Path) -> str:
    """The settings that point a command at `base`."""
    return f"--set export.serving_root={base.parent} --set export.model_name={base.name}"


def show_run(artifacts: Path, run_id: str) -> dict:
    run = ArtifactStore(artifacts).run(run_id)
    components = {}
    for name, step in STEPS.items():
        entry = run.record.get("components", {}).get(name)
        if entry is None:
            continue
        path = artifact(run, name)
        manifest = (read_manifest(path / MANIFEST) or {}) if path else {}
        components[name] = {
            "status": entry.get("status"),
            "from_run": entry.get("from_run") or (run.id if path else None),
            "duration_s": entry.get("duration_s", manifest.get("duration_s")),
            "path": str(path) if path else None,
            "fingerprint": (manifest.get("fingerprint") or entry.get("fingerprint") or "")[:12],
            "parameters": manifest.get("parameters", {}),
            "inputs": {arg: {"path": p, "run": run_id_of(p)} for arg, p in manifest.get("inputs", {}).items()},
            "results": step.summary(manifest.get("result") or {}),
            **({"error": entry["error"]} if entry.get("error") else {}),
        }
    return {"run": run.id, "status": run.status, "started_at": run.record.get("started_at"),
            "finished_at": run.record.get("finished_at"), "components": components}


def show_version(artifacts: Path, model_base: Path, version: int) -> dict:
    """Walks back from a served version to the data its model was trained on."""
    from components import serving

    if version not in serving.versions(model_base):
        raise FileNotFoundError(f"no served version {version} under {model_base}; `python -m pipeline models` lists them")
    push = serving.read_push_record(model_base, version)
    chain = []
    # From the model that was pushed (its fingerprint), not from the pushing run's export/:
    # a push whose run was killed before its export was saved still has a lineage.
    trained = ArtifactStore(artifacts).find("train", push["model_fingerprint"]) if push.get("model_fingerprint") else None
    todo = [trained.path] if trained else []
    while todo:  # train -> preprocess -> ingest, through each manifest's inputs
        path = todo.pop(0)
        manifest = read_manifest(path / MANIFEST) or {}
        component = manifest.get("component", path.name)
        chain.append({"component": component, "run": run_id_of(str(path)), "path": str(path),
                      "fingerprint": manifest.get("fingerprint", "")[:12],
                      "results": STEPS[component].summary(manifest.get("result") or {}) if component in STEPS else {}})
        for upstream in manifest.get("inputs", {}).values():
            if (Path(upstream) / MANIFEST).is_file() and str(Path(upstream)) not in [c["path"] for c in chain]:
                todo.append(Path(upstream))
    return {"version": version, "path": str(Path(model_base) / str(version)), "push": push, "lineage": chain}
