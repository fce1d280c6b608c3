"""The artifact store: one directory per run, one per component output, each with a manifest.

    <root>/runs/<run id>/run.json              the run: config, and each component's status
    <root>/runs/<run id>/<component>/           that component's output artifact
    <root>/runs/<run id>/<component>/manifest.json

An output is written under a dot-name in its run directory and renamed into place
with its manifest inside, so a directory named after a component is always whole.
Run ids sort by start time. The manifest's `fingerprint` (code, parameters, inputs)
is what a cache will key on; `inputs` is the lineage.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil

from pipeline.fingerprint import file_digest

MANIFEST = "manifest.json"
RUN_RECORD = "run.json"


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
    start time, so a recycled pid is not taken for the run)."""
    state = record.get("status") or "running"
    if state != "running":
        return state
    if "pid" not in record:
        return "unknown"  # written before runs recorded their process
    try:
        alive = psutil.Process(record["pid"]).create_time() == record["process_started"]
    except psutil.Error:
        alive = False
    return "running" if alive else "crashed"


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


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.runs = self.root / "runs"

    def new_run(self, record: dict) -> Path:
        self.runs.mkdir(parents=True, exist_ok=True)
        run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)
        run_dir = self.runs / run_id
        run_dir.mkdir()
        write_json_atomic(run_dir / RUN_RECORD, {"run_id": run_id, "started_at": now(), "components": {}, **record})
        with contextlib.suppress(OSError):  # without it a full disk may keep the failure unrecorded; no reason to fail
            (run_dir / RESERVE).write_bytes(b"\0" * RESERVE_BYTES)
        return run_dir

    def update_run(self, run_dir: Path, component: str | None = None, **fields) -> None:
        """Merge `fields` into run.json, or into its entry for `component`. On a full disk the
        run's reserve is given up to make room, so a failure there is still recorded."""
        record = json.loads((run_dir / RUN_RECORD).read_text())
        (record["components"].setdefault(component, {}) if component else record).update(fields)
        try:
            write_json_atomic(run_dir / RUN_RECORD, record)
        except OSError as err:
            if err.errno != errno.ENOSPC or not (run_dir / RESERVE).is_file():
                raise
            (run_dir / RESERVE).unlink()
            write_json_atomic(run_dir / RUN_RECORD, record)

    def release_reserve(self, run_dir: Path) -> None:
        """A finished run needs no room kept for it."""
        (Path(run_dir) / RESERVE).unlink(missing_ok=True)

    def latest(self, component: str) -> Artifact | None:
        """The newest whole output of `component`, from any run."""
        if not self.runs.is_dir():
            return None
        for run_dir in sorted(self.runs.iterdir(), reverse=True):
            path = run_dir / component
            if (path / MANIFEST).is_file():
                return Artifact(component, run_dir.name, path)
        return None

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
