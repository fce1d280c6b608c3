"""The artifact store: one directory per run, one per component output, each with a manifest.

    <root>/runs/<run id>/run.json              the run: config, and each component's status
    <root>/runs/<run id>/<component>/           that component's output artifact
    <root>/runs/<run id>/<component>/manifest.json

An output is written under a dot-name in its run directory and renamed into place
with its manifest inside, so a directory named after a component is always whole.
Run ids sort by start time. The manifest is the one record of a result: its
`fingerprint` (code, key, inputs' content) is what the cache keys on, `content` what the
output holds, `files` the size and checksum of each file, `inputs` the lineage and
`result` what the component returned.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil
from filelock import FileLock

from pipeline.fingerprint import file_digest

log = logging.getLogger("pipeline")
MANIFEST = "manifest.json"
RUN_RECORD = "run.json"


RECORD_LOCK = ".run.lock"  # beside run.json of a run an orchestrator's tasks share: they update it one at a time
RESERVE = ".reserve"  # room kept in each run for recording its failure on a full disk
RESERVE_BYTES = 256 * 1024


def write_atomic(path: Path, data: bytes) -> Path:
    """Readers see the old file or the new one, never half of either; a failed write
    (a full disk) leaves no temp file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str).encode())


def read_json(path: Path | None) -> dict:
    """A record written by the store, or {} when it is missing or unreadable (a killed writer)."""
    try:
        found = json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def run_id_of(path: str | Path) -> str | None:
    """The run an artifact path belongs to: the folder after the last `runs` in it."""
    parts = Path(path).parts
    if "runs" not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index("runs")
    return parts[i + 1] if i + 1 < len(parts) else None


def run_status(record: dict) -> str:
    """A run's status, `crashed` when it says running but its process is gone (by pid and
    start time, so a recycled pid is not taken for the run). An orchestrated run between two
    of its tasks is `waiting`."""
    state = record.get("status") or "running"
    if state != "running":
        return state
    if "pid" not in record:
        return "unknown"  # written before runs recorded their process
    return "running" if process_alive(record) else "crashed"


def process_alive(record: dict) -> bool:
    """Is the process a record names (`pid`, `process_started`) still the one running?"""
    try:
        return psutil.Process(record["pid"]).create_time() == record["process_started"]
    except (psutil.Error, KeyError, TypeError):
        return False


def file_records(folder: Path) -> dict[str, dict]:
    """Size and sha256 of every file of an output, by relative path, as its manifest records them."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_digest(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def damage(folder: Path, manifest: dict, *, full: bool = False) -> str | None:
    """What is wrong with an output's files against its manifest (missing, another size, and
    with `full` other bytes), or None when they match. Manifests older than the
    checksums have nothing to check."""
    for name, expected in (manifest.get("files") or {}).items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{path} has {size} bytes, its manifest says {expected['size']}"
        if full and file_digest(path) != expected["sha256"]:
            return f"{path} does not have the bytes its manifest records (sha256)"
    return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Artifact:
    component: str
    run_id: str
    path: Path

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / MANIFEST).read_text())


@dataclass(frozen=True)
class Run:
    """A run as its record says, whatever became of it: succeeded, failed, running, or
    crashed (its process gone)."""
    path: Path
    record: dict

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return run_status(self.record)


def read_manifest(path: Path) -> dict | None:
    """An output's manifest, or None (with a warning) when it is there but unreadable."""
    try:
        manifest = json.loads(Path(path).read_text())
        if not isinstance(manifest, dict) or "fingerprint" not in manifest:
            raise ValueError("no fingerprint in it")
        return manifest
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable manifest %s (%s); its output will be recomputed", path, err)
        return None


class ArtifactStore:
    """The layout of an artifacts root, in one place:

        runs/<run id>/run.json, runs/<run id>/<component>/manifest.json   the runs
        backups/<fingerprint>/ (+ <fingerprint>.lock)                      resumable steps' backups
        inference/<id>/manifest.json                                       batch scoring (`infer`)
        serving/<model name>/<version>/ (export.serving_root moves it)     the served versions
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.backups_dir = self.root / "backups"
        self.inference_dir = self.root / "inference"

    def new_id(self) -> str:
        """A run's or an inference's id: its start time to the millisecond, sortable, and a random
        tail. Milliseconds, because a fully cached run takes half a second: two runs in one second
        ordered by their random tails made an older run the `latest`."""
        started = datetime.now(timezone.utc)
        return f"{started:%Y%m%dT%H%M%S}{started.microsecond // 1000:03d}Z-{secrets.token_hex(2)}"

    def inferences(self) -> list[Path]:
        """Every whole inference folder, oldest first."""
        if not self.inference_dir.is_dir():
            return []
        return [p for p in sorted(self.inference_dir.iterdir()) if (p / MANIFEST).is_file()]

    def model_base(self, serving_root: str, model_name: str) -> Path:
        """Where a model's versions are served: `<serving root>/<model name>`; a relative
        serving root is under the artifacts root, not wherever the command runs."""
        return self.root / (serving_root or "serving") / model_name

    def backup_dir(self, fingerprint: str) -> Path:
        return self.backups_dir / fingerprint

    def backup_lock(self, fingerprint: str) -> Path:
        """Held by the one process that trains into `backup_dir(fingerprint)`."""
        return self.backups_dir / f"{fingerprint}.lock"

    def _run_dirs(self) -> list[Path]:
        if not self.runs_dir.is_dir():
            return []
        return [p for p in sorted(self.runs_dir.iterdir()) if not p.name.startswith(".") and (p / RUN_RECORD).is_file()]

    def runs(self) -> list[Run]:
        """Every run with a record, oldest first (run ids sort by start time)."""
        return [Run(p, read_json(p / RUN_RECORD)) for p in self._run_dirs()]

    def run(self, run_id: str) -> Run:
        path = self.runs_dir / run_id
        if not (path / RUN_RECORD).is_file() or "/" in run_id or run_id.startswith("."):
            raise FileNotFoundError(f"no run {run_id} in {self.runs_dir}; `python -m pipeline runs` lists them")
        return Run(path, read_json(path / RUN_RECORD))

    def manifest(self, output: Path) -> dict | None:
        return read_manifest(Path(output) / MANIFEST)

    def new_run(self, record: dict) -> Path:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        run_id = self.new_id()
        run_dir = self.runs_dir / run_id
        run_dir.mkdir()
        write_json_atomic(run_dir / RUN_RECORD, {"run_id": run_id, "started_at": now(), "components": {}, **record})
        with contextlib.suppress(OSError):  # without it a full disk may keep the failure unrecorded; no reason to fail
            (run_dir / RESERVE).write_bytes(b"\0" * RESERVE_BYTES)
        return run_dir

    def keyed_run(self, key: str, record: dict) -> tuple[Path, bool]:
        """The run an orchestrator's run (`key`: Airflow's run_id, the Kubeflow job's name)
        stands for, made by whichever of its tasks comes first; (its folder, made now). One
        run per DAG run, however many tasks and retries it takes."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(self.runs_dir / ".keys.lock"):  # two first tasks at once make one run
            found = self.keyed(key)
            if found:
                return found.path, False
            run_dir = self.new_run({**record, "orchestrator_run": key})
            (run_dir / RECORD_LOCK).touch()  # its tasks may run at once (validate beside train)
            return run_dir, True

    def keyed(self, key: str) -> Run | None:
        """The run an orchestrator's run `key` stands for, if any of its tasks has run."""
        return next((run for run in reversed(self.runs()) if run.record.get("orchestrator_run") == key), None)

    def update_run(self, run_dir: Path, component: str | None = None, **fields) -> dict:
        """Merge `fields` into run.json, or into its entry for `component`; return the record.
        On a full disk the run's reserve is given up to make room, so a failure there is still
        recorded."""
        shared = (run_dir / RECORD_LOCK).is_file()  # a run of one process needs no lock
        with FileLock(run_dir / RECORD_LOCK) if shared else contextlib.nullcontext():
            record = json.loads((run_dir / RUN_RECORD).read_text())
            (record["components"].setdefault(component, {}) if component else record).update(fields)
            try:
                write_json_atomic(run_dir / RUN_RECORD, record)
            except OSError as err:
                if err.errno != errno.ENOSPC or not (run_dir / RESERVE).is_file():
                    raise
                (run_dir / RESERVE).unlink()
                write_json_atomic(run_dir / RUN_RECORD, record)
        return record

    def release_reserve(self, run_dir: Path) -> None:
        """A finished run needs no room kept for it."""
        (Path(run_dir) / RESERVE).unlink(missing_ok=True)

    def _outputs(self, component: str):
        """(run id, output, manifest) of every whole output of `component`, newest first."""
        for run_dir in reversed(self._run_dirs()):  # the manifests, not the run records
            path = run_dir / component
            if (path / MANIFEST).is_file():
                manifest = read_manifest(path / MANIFEST)
                if manifest and manifest.get("status") == "succeeded":
                    yield run_dir.name, path, manifest

    def latest(self, component: str) -> Artifact | None:
        """The newest whole output of `component`, from any run."""
        return next((Artifact(component, run_id, path) for run_id, path, _ in self._outputs(component)), None)

    def find(self, component: str, fingerprint: str) -> Artifact | None:
        """The newest whole output of `component` with this fingerprint whose files are as its
        manifest recorded them (by size: cheap enough for every lookup); one that is not is
        named in a warning and passed over, so it is recomputed."""
        for run_id, path, manifest in self._outputs(component):
            if manifest["fingerprint"] == fingerprint:
                problem = damage(path, manifest)
                if problem:
                    log.warning("not reusing the %s output of run %s: %s; it is recomputed", component, run_id, problem)
                    continue
                return Artifact(component, run_id, path)
        return None

    def same_content(self, component: str, content: str, besides: str) -> str | None:
        """The run of another output of `component` holding this very content, if any."""
        return next((run_id for run_id, _, manifest in self._outputs(component)
                     if run_id != besides and manifest.get("content") == content), None)

    @contextmanager
    def staging(self, run_dir: Path, component: str):
        """Yields a scratch directory; on success the caller's manifest goes in and it
        becomes `<run>/<component>` in one rename; on failure it is removed."""
        scratch = Path(tempfile.mkdtemp(prefix=f".{component}-", dir=run_dir))
        try:
            yield scratch
            os.rename(scratch, run_dir / component)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
