"""Retention (`python -m pipeline gc`, and the end of every nightly): what may be deleted.

Kept, always:
- the last `retention.keep_runs` runs, and as many inference folders (`infer`);
- every run behind a kept served version (its push record names the run), and behind every
  version served under another serving root a run of this root pushed to (`lineage.model_bases`):
  this command prunes only its own model's versions;
- every run whose artifacts a kept run uses, through the cache or as an upstream input,
  followed transitively, so no kept manifest ever points at a deleted artifact;
- the last `retention.keep_versions` served versions, and whatever the count, the
  current one and the one it replaced (the default rollback target).
Never touched: a live run (its process alive, by the pid and start time its record
holds), its scratch, and everything it reads (recorded as each step starts).
Swept: scratch left by dead processes (dot-folders and dot-files in runs, `.staging-*` in
the serving base, temp files in the artifacts root), and training backups whose training
has since finished and that no live process holds.
`plan()` decides from the files alone; `apply()` deletes, each directory renamed to a
dot-name first so that no reader (TF Serving included) ever sees half of one, and served
versions only under the model's push lock.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.graph import STEPS
from pipeline.lineage import served_elsewhere
from pipeline.store import MANIFEST, RECORD_LOCK, RUN_RECORD, ArtifactStore, read_json, run_id_of

log = logging.getLogger("pipeline")


@dataclass
class Plan:
    model_base: Path | None = None  # whose push lock guards deleting its versions
    runs: list[Path] = field(default_factory=list)
    versions: list[Path] = field(default_factory=list)
    scratch: list[Path] = field(default_factory=list)

    why: dict[Path, str] = field(default_factory=dict)  # each path's reason, as `gc` prints it

    def paths(self) -> list[Path]:
        return [*self.runs, *self.versions, *self.scratch]


def tree_bytes(path: Path) -> int:
    """What deleting `path` frees: its files' sizes (links not followed)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size if path.exists() or path.is_symlink() else 0
    return sum(os.lstat(os.path.join(folder, name)).st_size
               for folder, _, files in os.walk(path) for name in files)


def _run_ids_in(record, runs_dir: Path) -> set[str]:
    """Run ids of every artifact path mentioned anywhere in a run record or manifest."""
    found: set[str] = set()
    if isinstance(record, dict):
        for value in record.values():
            found |= _run_ids_in(value, runs_dir)
    elif isinstance(record, list):
        for value in record:
            found |= _run_ids_in(value, runs_dir)
    elif isinstance(record, str) and run_id_of(record) and (runs_dir / run_id_of(record)).is_dir():
        found.add(run_id_of(record))
    return found


def _uses(run_dir: Path) -> set[str]:
    """The runs whose artifacts this run reads: inputs in its manifests, reuse in its record."""
    used = _run_ids_in(read_json(run_dir / RUN_RECORD).get("components", {}), run_dir.parent)
    for manifest in run_dir.glob(f"*/{MANIFEST}"):
        used |= _run_ids_in(read_json(manifest).get("inputs", {}), run_dir.parent)
    return used - {run_dir.name}


def plan(artifacts: Path, model_base: Path, keep_runs: int, keep_versions: int,
         active: set[str] = frozenset()) -> Plan:
    """What retention would delete; `active` names runs in progress (besides every run whose
    process is alive), never touched."""
    from components import serving

    store = ArtifactStore(artifacts)
    runs_dir, runs = store.runs_dir, store.runs()
    run_dirs = [run.path for run in runs]
    active = set(active) | {run.id for run in runs if run.status in ("running", "waiting")}  # waiting: for its next task
    versions = serving.versions(model_base)
    current = versions[-1] if versions else None
    protected = {current, serving.read_push_record(model_base, current).get("replaces") if current else None}
    kept_versions = set(versions[-keep_versions:] if keep_versions > 0 else []) | (protected - {None})

    keep = {p.name for p in run_dirs[-keep_runs:]} if keep_runs > 0 else set()
    keep |= set(active)
    keep |= {serving.read_push_record(model_base, v).get("run") for v in kept_versions} - {None}
    for base in served_elsewhere(artifacts, model_base):  # pushed under other settings: kept, and their runs
        keep |= {serving.read_push_record(base, v).get("run") for v in serving.versions(base)} - {None}
    todo = list(keep)
    while todo:  # everything a kept run uses is kept, transitively
        name = todo.pop()
        if (runs_dir / name).is_dir():
            for used in _uses(runs_dir / name) - keep:
                keep.add(used)
                todo.append(used)

    old_runs = [p for p in run_dirs if p.name not in keep]
    # The newest inference folders stay, as many as runs: their review queues wait for a person.
    old_inferences = store.inferences()[:-keep_runs] if keep_runs > 0 else []
    result = Plan(model_base=Path(model_base), runs=old_runs + old_inferences,
                  versions=[Path(model_base) / str(v) for v in versions if v not in kept_versions])
    result.why.update({p: f"older than the last {keep_runs} run(s) (retention.keep_runs), and no kept run or "
                          f"served version uses it" for p in old_runs})
    result.why.update({p: f"older than the last {keep_runs} inference folder(s) (retention.keep_runs)"
                       for p in old_inferences})
    result.why.update({p: f"older than the last {keep_versions} version(s) (retention.keep_versions), neither "
                          f"the served one nor the one it replaced" for p in result.versions})
    for run_dir in run_dirs:
        if run_dir.name not in active:  # a dead process's scratch, temp files and reserve
            _sweep(result, sorted(p for p in run_dir.iterdir() if p.name.startswith(".") and p.name != RECORD_LOCK),
                   "scratch or temp files of a process that is gone")
    _sweep(result, sorted(Path(artifacts).glob(".index.html.*")), "a report writer's temp file, killed mid-write")
    if Path(model_base).is_dir() and _free(serving.push_lock(model_base)):  # no push under way
        _sweep(result, sorted(Path(model_base).glob(".staging-*")), "an interrupted push's staging copy")
    _sweep(result, _finished_backups(store), "the backup of a training that has finished since")
    return result


def _sweep(found: Plan, paths: list[Path], why: str) -> None:
    found.scratch += paths
    found.why.update({p: why for p in paths})


def _free(lock_path: Path) -> bool:
    """No live process holds this lock (it is taken and let go at once)."""
    if not lock_path.exists():
        return True
    try:
        with FileLock(lock_path).acquire(timeout=0):
            return True
    except Timeout:
        return False


def _finished_backups(store: ArtifactStore) -> list[Path]:
    """Backups of resumable steps (named by the step's fingerprint, locked while it runs)
    whose step has succeeded since, with their locks, unless a live process holds one."""
    backups = store.backups_dir
    if not backups.is_dir():
        return []
    resumable = [name for name, step in STEPS.items() if step.resumes]
    trained = {read_json(m).get("fingerprint") for name in resumable for m in store.runs_dir.glob(f"*/{name}/{MANIFEST}")}
    found = []
    for fp in sorted(trained & {p.name.removesuffix(".lock") for p in backups.iterdir()}):
        lock = store.backup_lock(fp)
        if _free(lock):
            found += [p for p in (store.backup_dir(fp), lock) if p.exists()]
    return found


def apply(found: Plan) -> None:
    from components import serving

    with serving.publishing(found.model_base) if found.versions else contextlib.nullcontext():
        for path in found.paths():
            doomed = path.with_name(f".deleting-{path.name}")
            try:
                path.rename(doomed)  # gone for every reader at once; the rest may take a while
            except OSError:
                doomed = path
            if doomed.is_dir():
                shutil.rmtree(doomed, ignore_errors=True)
            else:
                doomed.unlink(missing_ok=True)
            log.info("gc: deleted %s", path)
