"""`runs` and `show`: the store's records read back as lineage, with no metadata server.

Everything comes from run.json, the manifests and the push records; nothing here
imports TensorFlow.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.cache import find, read_manifest
from pipeline.graph import STEPS
from pipeline.store import MANIFEST, RUN_RECORD, ArtifactStore, read_json, run_id_of, run_status


def artifact(run_dir: Path, component: str, record: dict | None = None) -> Path | None:
    """The output of `component` as the run used it: its own, or the one the cache reused."""
    record = record if record is not None else read_json(run_dir / RUN_RECORD)
    entry = record.get("components", {}).get(component, {})
    # Through the run that made it: the `reused` path is as the artifacts root was given,
    # relative to wherever that run was started.
    path = Path(run_dir).parent / entry["from_run"] / component if entry.get("from_run") else Path(run_dir) / component
    return path if (path / MANIFEST).is_file() else None


def _result(run_dir: Path, component: str, record: dict) -> dict:
    path = artifact(run_dir, component, record)
    return (read_manifest(path / MANIFEST) or {}).get("result") or {} if path else {}


def run_row(run_dir: Path) -> dict:
    record = read_json(run_dir / RUN_RECORD)
    ingest, export = _result(run_dir, "ingest", record), _result(run_dir, "export", record)
    evaluate = _result(run_dir, "evaluate", record)
    splits = ingest.get("splits", {})
    return {
        "run": run_dir.name,
        "started_at": record.get("started_at"),
        "status": run_status(record),
        "preset": record.get("config", {}).get("train", {}).get("preset"),
        "train": splits.get("train", {}).get("count"),
        "test": splits.get("test", {}).get("count"),
        "test_accuracy": (evaluate.get("candidate") or {}).get("accuracy"),
        "pushed": export.get("version") if export.get("pushed") else None,
        "components": {name: c.get("status") for name, c in record.get("components", {}).items()},
    }


def runs(artifacts: Path) -> list[dict]:
    root = Path(artifacts) / "runs"
    dirs = sorted(p for p in root.iterdir() if (p / RUN_RECORD).is_file()) if root.is_dir() else []
    return [run_row(p) for p in dirs]


def _key_results(component: str, result: dict) -> dict:
    if component == "ingest":
        return {name: {"tfds_split": s.get("tfds_split"), "count": s.get("count")} for name, s in result.get("splits", {}).items()}
    if component == "preprocess":
        return {name: s.get("count") for name, s in result.items() if isinstance(s, dict)}
    if component == "validate":
        return {k: result.get(k) for k in ("passed", "errors", "warnings")}
    if component == "train":
        return {k: result.get(k) for k in ("epochs_run", "stop_reason", "train_seconds")}
    if component == "evaluate":
        return {"accuracy": (result.get("candidate") or {}).get("accuracy"), "blessed": result.get("blessed"),
                "reasons": result.get("reasons")}
    if component == "export":
        return {k: result.get(k) for k in ("pushed", "version", "not_pushed_because") if k in result}
    return {}


def show_run(run_dir: Path) -> dict:
    record = read_json(run_dir / RUN_RECORD)
    if not record:
        raise FileNotFoundError(f"no run {run_dir.name} in {run_dir.parent}; `python -m pipeline runs` lists them")
    components = {}
    for name in STEPS:
        entry = record.get("components", {}).get(name)
        if entry is None:
            continue
        path = artifact(run_dir, name, record)
        manifest = (read_manifest(path / MANIFEST) or {}) if path else {}
        components[name] = {
            "status": entry.get("status"),
            "from_run": entry.get("from_run") or (run_dir.name if path else None),
            "duration_s": entry.get("duration_s", manifest.get("duration_s")),
            "path": str(path) if path else None,
            "fingerprint": (manifest.get("fingerprint") or entry.get("fingerprint") or "")[:12],
            "parameters": manifest.get("parameters", {}),
            "inputs": {arg: {"path": p, "run": run_id_of(p)} for arg, p in manifest.get("inputs", {}).items()},
            "results": _key_results(name, manifest.get("result") or {}),
            **({"error": entry["error"]} if entry.get("error") else {}),
        }
    return {"run": run_dir.name, "status": run_status(record), "started_at": record.get("started_at"),
            "finished_at": record.get("finished_at"), "components": components}


def show_version(artifacts: Path, model_base: Path, version: int) -> dict:
    """Walks back from a served version to the data its model was trained on."""
    from components import serving

    if version not in serving.versions(model_base):
        raise FileNotFoundError(f"no served version {version} under {model_base}; `python -m pipeline models` lists them")
    push = serving.read_push_record(model_base, version)
    chain = []
    # From the model that was pushed (its fingerprint), not from the pushing run's export/:
    # a push whose run was killed before its export was saved still has a lineage.
    trained = find(ArtifactStore(artifacts), "train", push["model_fingerprint"]) if push.get("model_fingerprint") else None
    path = trained.path if trained else None
    while path is not None:  # train -> preprocess -> ingest, through each manifest's data input
        manifest = read_manifest(path / MANIFEST) or {}
        chain.append({"component": manifest.get("component", path.name), "run": run_id_of(str(path)), "path": str(path),
                      "fingerprint": manifest.get("fingerprint", "")[:12],
                      "results": _key_results(manifest.get("component", path.name), manifest.get("result") or {})})
        inputs = manifest.get("inputs", {})
        upstream = inputs.get("model") or inputs.get("transformed") or inputs.get("examples")
        path = Path(upstream) if upstream and (Path(upstream) / MANIFEST).is_file() else None
    return {"version": version, "path": str(Path(model_base) / str(version)), "push": push, "lineage": chain}
