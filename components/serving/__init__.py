"""The TensorFlow Serving directory layout: `<serving root>/<model name>/<integer version>/`.

TF Serving serves the highest integer version and ignores other names, so a version
is staged under a dot-name and renamed into place: a reader sees a whole version or
none, and a crash mid-copy leaves the previous version serving. Rollback is a roll
forward: the chosen earlier version is published again as the newest, in one rename.
Each version carries what `models` lists in `assets.extra/push.json`, the place a
SavedModel keeps files the graph does not use.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from components.serving import servable

PUSH_RECORD = Path("assets.extra") / "push.json"
MODEL_CARD = Path("assets.extra") / "model_card.html"  # written by export (components/serving/model_card.py)
CARDS = (MODEL_CARD, MODEL_CARD.with_suffix(".md"))
UNPUSHED = "not pushed yet"  # what a card says it is served as, until a push writes its number in
SERVED_AS = re.compile(r"(Served as: )[^.<\n]*(\.)")
LOCK = ".{}.push.lock"  # beside the model base, for the model named in {}: its folder holds only versions
LOCK_TIMEOUT_S = 120  # a push holds the lock for the copy of one SavedModel
DIR_MODE, FILE_MODE = 0o755, 0o644  # the served tree: written by its owner alone, read by TF Serving
ANY_BASELINE = object()  # push() without a blessing to check (a rollback)


class ServingError(ValueError):
    """A serving-directory request that cannot be met; the message says what to do."""


class AlreadyServed(ServingError):
    """The current version was pushed from this same model."""

    def __init__(self, version: int):
        super().__init__(f"version {version} already serves this model")
        self.version = version


class StaleBlessing(ServingError):
    """The served version changed after the candidate was judged against another one."""


def _numbered(model_base: Path) -> list[int]:
    base = Path(model_base)
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and p.is_dir()) if base.is_dir() else []


def versions(model_base: Path) -> list[int]:
    """Published versions, oldest first: numbered folders holding a SavedModel. An empty or
    incomplete numbered folder (no saved_model.pb) is not a version at all."""
    return [v for v in _numbered(model_base) if (Path(model_base) / str(v) / "saved_model.pb").is_file()]


def broken(version_dir: Path) -> str | None:
    """Why TF Serving could not load this version, found from its files without loading it
    (no TensorFlow, no graph run; `servable.problem`); None when it looks whole. Catches what a
    crash, a bad copy or a hand edit leaves: a truncated, garbled or replaced saved_model.pb, no
    MetaGraph serving `serving_default`, a missing variables index or data shard."""
    return servable.problem(version_dir)


def current_version(model_base: Path) -> int | None:
    published = versions(model_base)
    return published[-1] if published else None


def read_push_record(model_base: Path, version: int) -> dict:
    path = Path(model_base) / str(version) / PUSH_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def baseline_version(model_base: Path, model_fingerprint: str | None) -> int | None:
    """The served version a candidate must beat: the newest one not pushed from this same model.

    A model is never its own baseline: once this candidate is served, re-running it
    compares it with what it replaced, exactly as when it was first blessed, so an
    unchanged re-run has the same evaluation and export, and reuses both.
    """
    for version in reversed(versions(model_base)):
        if not model_fingerprint or read_push_record(model_base, version).get("model_fingerprint") != model_fingerprint:
            return version
    return None


def identity(model_base: Path, version: int | None) -> dict | None:
    """What a blessing was judged against, as `push` checks it: the version and the model in it
    (a rollback serves the same model under a new number)."""
    if version is None:
        return None
    return {"version": version, "model_fingerprint": read_push_record(model_base, version).get("model_fingerprint")}


def _same_model(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is b
    if a.get("model_fingerprint") and b.get("model_fingerprint"):
        return a["model_fingerprint"] == b["model_fingerprint"]
    return a.get("version") == b.get("version")


def push_lock(model_base: Path) -> Path:
    return Path(model_base).with_name(LOCK.format(Path(model_base).name))


@contextmanager
def publishing(model_base: Path):
    """Holds the model's push lock: one process at a time adds or deletes versions. An OS
    lock, released when its holder dies, however it dies."""
    base = Path(model_base)
    _make_dirs(base)
    lock = FileLock(push_lock(base), mode=FILE_MODE)  # explicit: filelock otherwise leaves it to the umask
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout:
        raise ServingError(f"another process has held {lock.lock_file} for {LOCK_TIMEOUT_S}s; "
                           f"nothing was pushed, run again when it is done") from None
    try:
        yield base
    finally:
        lock.release()


def push(saved_model: Path, model_base: Path, record: dict, *, judged_against=ANY_BASELINE,
         copy=shutil.copytree) -> int:
    """Publish a copy of `saved_model` as the next version; return its number.

    Under the model's push lock, the version it would replace is read again: with
    `judged_against` (the blessing's `judged_against`), the push happens only if the
    candidate was judged against what is served now; otherwise StaleBlessing, and
    AlreadyServed when the current version holds this very model (`record`'s
    `model_fingerprint`). `copy` is the copying function, replaceable so tests can
    interrupt a push mid-copy.
    """
    with publishing(model_base) as base:
        replaces = current_version(base)
        if judged_against is not ANY_BASELINE:
            mine = record.get("model_fingerprint")
            if mine and replaces is not None and read_push_record(base, replaces).get("model_fingerprint") == mine:
                raise AlreadyServed(replaces)
            now = identity(base, baseline_version(base, mine))
            if not _same_model(now, judged_against):
                raise StaleBlessing(
                    f"the blessing was judged against {_named(judged_against)}, but {_named(now)} is served now "
                    f"(pushed by run {read_push_record(base, now['version']).get('run', '?') if now else '?'}); "
                    f"not pushed: run the pipeline again to judge this model against it")
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
        try:
            try:
                copy(saved_model, staging / "model")
                (staging / "model" / PUSH_RECORD).parent.mkdir(parents=True, exist_ok=True)
                # Above every numbered folder, whole or not: the rename never lands on a leftover.
                version = max(_numbered(base), default=0) + 1
                full_record = {**record, "version": version, "replaces": replaces,
                               "pushed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                (staging / "model" / PUSH_RECORD).write_text(json.dumps(full_record, indent=2))
                stamp_cards(staging / "model", version, record.get("rollback_of"))
                _seal(staging / "model")
            except (shutil.Error, OSError) as err:
                still = f"version {replaces} still serves" if replaces is not None else "nothing is served"
                reason = _reason(err)
                hint = "; free some space and run the same command again" if _disk_full(err, reason) else ""
                raise ServingError(f"could not stage the model in {base} ({reason}); nothing was pushed, "
                                   f"{still}{hint}") from None
            os.rename(staging / "model", base / str(version))
            return version
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def stamp_cards(model_dir: Path, version: int, rollback_of: int | None = None) -> None:
    """The copy's model cards say which version they are served as ("Served as: version 7 (a
    rollback of 3)."): the card is written before a version number exists."""
    served_as = f"version {version}" + (f" (a rollback of {rollback_of})" if rollback_of else "")
    for card in CARDS:
        path = Path(model_dir) / card
        if path.is_file():
            path.write_text(SERVED_AS.sub(lambda m: f"{m.group(1)}{served_as}{m.group(2)}", path.read_text(), count=1))


def _make_dirs(path: Path) -> None:
    """`mkdir -p` with DIR_MODE for every folder it makes: Path.mkdir gives parents the umask's mode."""
    path = Path(path)
    if not path.is_dir():
        _make_dirs(path.parent)
        path.mkdir(mode=DIR_MODE, exist_ok=True)


def _seal(tree: Path) -> None:
    """A staged version's modes, whatever the umask or the source's modes: nobody but the
    owner may change a model that is served (loading it runs its graph)."""
    for folder, dirs, files in os.walk(tree):
        os.chmod(folder, DIR_MODE)
        for name in files:
            os.chmod(os.path.join(folder, name), FILE_MODE)


def _disk_full(err: Exception, reason: str) -> bool:
    return getattr(err, "errno", None) == errno.ENOSPC or "No space left" in reason


def _named(judged: dict | None) -> str:
    return f"version {judged['version']}" if judged else "no served version"


def _reason(err: Exception) -> str:
    """One reason, where shutil.Error lists (source, destination, why) for every file."""
    if isinstance(err, shutil.Error) and err.args and isinstance(err.args[0], list) and err.args[0]:
        return str(err.args[0][0][-1])
    return err.strerror or str(err) if isinstance(err, OSError) else str(err)


def rollback(model_base: Path, version: int | None = None) -> int:
    """Serve `version` again (default: the one the current version replaced); return the new number."""
    base = Path(model_base)
    current = current_version(base)
    if current is None:
        raise ServingError(f"no served versions under {base}; run the pipeline to push one first")
    if version is None:
        version = read_push_record(base, current).get("replaces")
        if version is None:
            raise ServingError(f"version {current} replaced nothing; name the version to roll back to")
    if version not in versions(base):
        raise ServingError(f"no version {version} under {base}; choose one of {versions(base)}")
    if version == current:
        raise ServingError(f"version {version} is already the one served")
    problem = broken(base / str(version))
    if problem:
        whole = [v for v in versions(base) if v != current and not broken(base / str(v))]
        raise ServingError(f"version {version} is BROKEN ({problem}); nothing was rolled back, version {current} "
                           f"still serves; whole versions to roll back to: "
                           f"{', '.join(map(str, whole)) if whole else 'none'}")
    previous = read_push_record(base, version)
    record = {k: previous[k] for k in ("run", "model_fingerprint", "test_accuracy", "model_name") if k in previous}
    return push(base / str(version), base, {**record, "rollback_of": version})


def listing(model_base: Path) -> list[dict]:
    """One row per published version, oldest first, the served one marked current; `model_card`
    is the card's path relative to the model base, when the version has one."""
    current = current_version(model_base)
    return [
        {**read_push_record(model_base, v), "version": v, "current": v == current,
         "broken": broken(Path(model_base) / str(v)),
         **({"model_card": f"{v}/{MODEL_CARD.as_posix()}"} if (Path(model_base) / str(v) / MODEL_CARD).is_file() else {})}
        for v in versions(model_base)
    ]
