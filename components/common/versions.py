"""Installed versions of packages by name: what a manifest's fingerprint and a model card record."""
from __future__ import annotations

import platform
from importlib import metadata


def versions_of(packages: tuple[str, ...]) -> dict[str, str]:
    """Python's version and each installed package's; a package not installed is left out."""
    found = {"python": platform.python_version()}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found
