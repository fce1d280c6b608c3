"""The cache: what identifies a step's output, and whether an earlier one stands in for it.

A step's fingerprint hashes its code (and every project module it imports), its key, the
package versions and its inputs' *content* digests, not their fingerprints: a step that
executes again and makes the same content (a comment edited in its module, a deleted
output recomputed) leaves every step after it cached, as a build system's early cutoff
does. A hit is an earlier run's directory, reused in place (nothing is copied), found by
the store; a damaged or unreadable one is named in a warning and recomputed.
"""
from __future__ import annotations

import logging

from pipeline.fingerprint import code_digest, fingerprint, package_versions
from pipeline.graph import Step, Upstream
from pipeline.store import ArtifactStore

log = logging.getLogger("pipeline")


def step_fingerprint(step: Step, key: dict, upstream: dict[str, Upstream]) -> str:
    return fingerprint(code_digest(step.module), key, {arg: u.content for arg, u in upstream.items()},
                       package_versions())


def note_same_content(store: ArtifactStore, step: Step, content: str, run_id: str) -> None:
    """Says so when a step that executed made what an earlier run already had: what
    follows it is keyed on that content, so it is reused."""
    earlier = store.same_content(step.name, content, besides=run_id)
    if earlier:
        log.info("%s executed: same content as run %s; downstream unaffected", step.name, earlier)
