"""The cache: an earlier whole output with the same fingerprint stands in for running again.

Nothing is copied: a hit is the earlier run's directory, which the new run's record and
the manifests downstream point at (so lineage shows where each artifact came from).
The only index is the store itself, read newest first; a manifest that cannot be read
is named in a warning and treated as missing, and an output deleted by hand is simply
not found, so either is recomputed.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.store import MANIFEST, Artifact, ArtifactStore, damage

log = logging.getLogger("pipeline")


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


def find(store: ArtifactStore, component: str, fingerprint: str) -> Artifact | None:
    """The newest successful output of `component` with this fingerprint, from any run."""
    if not store.runs.is_dir():
        return None
    for run_dir in sorted(store.runs.iterdir(), reverse=True):
        path = run_dir / component
        if not (path / MANIFEST).is_file():
            continue
        manifest = read_manifest(path / MANIFEST)
        if manifest and manifest["fingerprint"] == fingerprint and manifest.get("status") == "succeeded":
            problem = damage(path, manifest)  # sizes only: cheap enough for every hit
            if problem:
                log.warning("not reusing the %s output of run %s: %s; it is recomputed", component, run_dir.name, problem)
                continue
            return Artifact(component, run_dir.name, path)
    return None
