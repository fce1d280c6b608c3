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

import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

MANIFEST = "manifest.json"
RUN_RECORD = "run.json"


def write_json_atomic(path: Path, data) -> None:
    """Readers see the old file or the new one, never half of either."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


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
        return run_dir

    def update_run(self, run_dir: Path, component: str | None = None, **fields) -> None:
        """Merge `fields` into run.json, or into its entry for `component`."""
        record = json.loads((run_dir / RUN_RECORD).read_text())
        (record["components"].setdefault(component, {}) if component else record).update(fields)
        write_json_atomic(run_dir / RUN_RECORD, record)

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
