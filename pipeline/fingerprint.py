"""Fingerprints: what a component's output depends on, hashed, with nothing heavy imported.

A fingerprint covers the component's code and every project module it imports,
transitively (read with `ast`, never imported, so deciding costs no TensorFlow), with the
data folders those modules name (the model card's templates), its
key parameters, its inputs' fingerprints and the versions of the packages it runs on.
Data counts by content: the MNIST source files' checksums, the extra images' bytes, a
served model's files.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import struct
from functools import lru_cache
from pathlib import Path

from components.common.versions import versions_of

ROOT = Path(__file__).resolve().parents[1]  # the project: components/ and pipeline/ live here
PROJECT_PACKAGES = ("components", "pipeline")
PACKAGES = ("tensorflow", "keras", "tensorflow-datasets", "apache-beam", "scikit-learn", "numpy")
SERVING_METADATA = "assets.extra"  # push records: where a version came from, not what it computes


def _module_file(name: str, root: Path) -> Path | None:
    path = root.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=256)
def _nodes(source: str) -> tuple[ast.AST, ...]:
    # Every node of one module's source, parsed once for its imports and its data folders.
    return tuple(ast.walk(ast.parse(source)))


def _imports(source: str, module: str) -> set[str]:
    """Project modules named by the import statements of one module."""
    found = set()
    for node in _nodes(source):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from components import serving`
    return {n for n in found if n.split(".")[0] in PROJECT_PACKAGES}


def project_modules(module: str, root: Path | None = None) -> dict[str, Path]:
    """`module` and every project module it imports, transitively, with their packages' __init__."""
    root = root or ROOT
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b runs a/__init__.py first
            prefix = ".".join(parts[:i])
            path = _module_file(prefix, root)
            if path is not None and prefix not in seen:
                seen[prefix] = path
                todo.extend(_imports(path.read_text(), prefix) - set(seen))
    return seen


def data_files(path: Path, source: str) -> list[Path]:
    """The files of every data folder (not a package) beside module `path` that its `source` names
    in a string, such as the `templates` a module renders: they shape its output as its code does."""
    names = {node.value for node in _nodes(source) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    folders = [path.parent / n for n in sorted(names) if n.isidentifier() and n != "__pycache__"]
    return sorted(f for folder in folders if folder.is_dir() and not (folder / "__init__.py").exists()
                  for f in folder.rglob("*") if f.is_file() and "__pycache__" not in f.parts)


def code_digest(module: str, root: Path | None = None) -> str:
    """The module's code, every project module it imports and the data folders each names (`data_files`)."""
    root = root or ROOT
    digest = hashlib.sha256()
    for name, path in sorted(project_modules(module, root).items()):
        source = path.read_bytes()
        digest.update(name.encode() + b"\0" + source + b"\0")
        for data in data_files(path, source.decode()):
            digest.update(data.relative_to(root).as_posix().encode() + b"\0" + data.read_bytes() + b"\0")
    return digest.hexdigest()


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    return versions_of(PACKAGES)


def fingerprint(code: str, key: dict, inputs: dict[str, str], versions: dict[str, str]) -> str:
    payload = {"code": code, "key": key, "inputs": inputs, "versions": versions}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_digest(files: dict[str, dict]) -> str:
    """An output's content from its manifest's file records (relative path -> size, sha256)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name]["sha256"].encode() + b"\0")
    return digest.hexdigest()


def records_digest(paths: list[Path]) -> str:
    """The records of TFRecord files as a set: the same records in another layout (files,
    order) digest the same. Reads the TFRecord framing itself (length, CRC, data, CRC), so
    the decision needs no TensorFlow."""
    hashes = []
    for path in paths:
        with open(path, "rb") as f:
            while header := f.read(12):
                if len(header) < 12:
                    raise ValueError(f"{path} ends inside a record header: truncated")
                (length,) = struct.unpack("<Q", header[:8])
                data = f.read(length)
                if len(data) < length or len(f.read(4)) < 4:
                    raise ValueError(f"{path} ends inside a record: truncated")
                hashes.append(hashlib.sha256(data).digest())
    return hashlib.sha256(b"".join(sorted(hashes))).hexdigest()


def tree_digest(folder: Path, skip: tuple[str, ...] = ()) -> str | None:
    """Every file's relative path and bytes under `folder`; None when there is no such folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if not relative.startswith(skip):
            digest.update(relative.encode() + b"\0" + file_digest(path).encode())
    return digest.hexdigest()


def served_digest(version_dir: Path | None) -> str | None:
    """What a served version computes: its SavedModel's files, not its push record."""
    return tree_digest(version_dir, skip=(SERVING_METADATA,)) if version_dir else None


def _tfds_file(*parts: str) -> Path | None:
    spec = importlib.util.find_spec("tensorflow_datasets")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.is_file() else None


def registered_checksums(dataset: str) -> dict[str, str]:
    """TFDS's registered sha256 of each source file of `dataset`, by file name."""
    path = _tfds_file("url_checksums", f"{dataset}.txt")
    if path is None:
        return {}
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return {row[3] if len(row) > 3 else Path(row[0]).name: row[2] for row in rows}


def tfds_version(dataset: str) -> str | None:
    """The builder's VERSION, read from its source: what `tfds.builder(dataset).version` would say."""
    path = _tfds_file("image_classification", f"{dataset}.py")
    if path is None:
        return None
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name.lower() == dataset:
            for statement in node.body:
                if (isinstance(statement, ast.Assign) and any(getattr(t, "id", None) == "VERSION" for t in statement.targets)
                        and isinstance(statement.value, ast.Call) and statement.value.args):
                    return ast.literal_eval(statement.value.args[0])
    return None


def source_content(dataset: str, manual_dir: str) -> dict:
    """The MNIST source by content: the mirror's bytes when there is one, else TFDS's registered checksums.

    A mirror file that is missing counts as missing here; ingest itself says what is wrong.
    """
    registered = registered_checksums(dataset)
    if not manual_dir:
        return {"dataset": dataset, "version": tfds_version(dataset), "files": registered}
    files = {}
    for name in registered:
        path = Path(manual_dir) / name
        files[name] = file_digest(path) if path.is_file() else "missing"
    return {"dataset": dataset, "version": tfds_version(dataset), "files": files}
