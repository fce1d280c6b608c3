"""Runs the step graph over the artifact store: inputs, cache decisions, outputs, manifests, run.json.

Every step's fingerprint is computed before anything heavy is imported; a step whose
fingerprint matches an earlier whole output is `cached` (that output is reused, not
copied), and only the steps that must run import their component, and so TensorFlow,
Beam or TFDS.
"""
from __future__ import annotations

import contextlib
import errno
import importlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from pipeline import cache
from pipeline.config import Config
from pipeline.console import printable
from pipeline.fingerprint import package_versions
from pipeline.graph import STEPS, RunContext, Step, Upstream, downstream, upstream_steps
from pipeline.store import MANIFEST, ArtifactStore, damage, file_records, now, process_alive, read_json

log = logging.getLogger("pipeline")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_stop_requested: list[int] = []  # the signals `stoppable` caught, until it is let go
LOGGERS = ("pipeline", "components")  # ours; library chatter stays out of run.log


class MissingInputError(RuntimeError):
    """A component's upstream artifact does not exist yet."""


def model_base(cfg: Config, artifacts: Path) -> Path:
    """Where this model's versions are served: `<serving root>/<model name>`."""
    return ArtifactStore(artifacts).model_base(cfg.export.serving_root, cfg.export.model_name)


def run(cfg: Config, artifacts: Path, components: list[str] | None = None, *,
        use_cache: bool = True, rerun: list[str] | tuple[str, ...] = (), execute_named: bool = True,
        run_key: str | None = None) -> Path:
    """Run `components` (default: all, in order) as one new run; return its directory.

    Components named explicitly execute (running one alone to debug it) unless `execute_named`
    is off; the others are reused from the cache when their fingerprint matches, unless
    `use_cache` is off or they are in `rerun` or depend on it.

    With `run_key` (an orchestrator's run id) the components are tasks of the one run that key
    stands for: they join it, read their inputs from what its earlier tasks made, and use the
    cache as a whole run does; the run succeeds when its last task does.
    """
    store = ArtifactStore(artifacts)
    names = list(components) if components else list(STEPS)
    unknown = [n for n in [*names, *rerun] if n not in STEPS]
    if unknown:
        raise ValueError(f"unknown component {unknown[0]!r}; choose one of {', '.join(STEPS)}")
    if not run_key:
        _check_inputs(store, names)
    for name in names:  # set-up before TensorFlow starts (the multi-worker join)
        if STEPS[name].prepare and STEPS[name].prepare(cfg, names):
            rerun = (*rerun, name)
    forced = (set(components or ()) if execute_named and not run_key else set()) | downstream(rerun)

    me = psutil.Process()
    process = {"pid": me.pid, "process_started": me.create_time(), "status": "running"}
    if run_key:
        run_dir = _join(store, run_key, cfg, names, process)
    else:
        run_dir = store.new_run({"components_requested": names, "config": cfg.model_dump(), **process})
    with logging_to(run_dir / "run.log"):
        ctx = RunContext(run_dir.name, store, model_base(cfg, artifacts))
        log.info("run %s %s in %s", run_dir.name, f"task {' '.join(names)} started" if run_key else "started", run_dir)
        produced = _done_in(store, run_dir) if run_key else {}
        step = None
        try:
            with stoppable(), temp_files_in(run_dir):
                for step in names:
                    stop_if_requested()
                    produced[step] = _run_step(store, run_dir, STEPS[step], cfg, ctx, produced,
                                               use_cache=use_cache and step not in forced)
            if _finished(store, run_dir):
                store.update_run(run_dir, status="succeeded", finished_at=now())
                log.info("run %s succeeded", run_dir.name)
        except Terminated as stop:
            store.update_run(run_dir, status="terminated", finished_at=now(), error=str(stop), stopped_in=step)
            log.error("run %s %s during %s", run_dir.name, stop, step)
            raise
        except BaseException as err:
            store.update_run(run_dir, status="failed", finished_at=now(), error=error_line(err))
            raise
        finally:
            store.release_reserve(run_dir)
            from pipeline.report import build_all  # only once a run has happened

            for path in build_all(run_dir, Path(artifacts), ctx.model_base):
                log.info("report: %s", path)
    return run_dir


def _join(store: ArtifactStore, run_key: str, cfg: Config, names: list[str], process: dict) -> Path:
    """The run a task of `run_key` belongs to, marked as running in this process. A task runs
    after the tasks of the steps it waits for, and every task of one orchestrator run carries
    the same configuration: one run has one."""
    found = store.keyed(run_key)
    done = {n for n, c in (found.record["components"] if found else {}).items() if c.get("status") in DONE}
    missing = [up for name in names for up in upstream_steps(name) if up not in names and up not in done]
    if missing:
        raise MissingInputError(f"{' '.join(names)} runs after {', '.join(dict.fromkeys(missing))}, which "
                                f"{found.id if found else 'the run of ' + printable(run_key)} has not finished; "
                                f"the orchestrator must follow the step graph (python -m pipeline dag)")
    config = json.loads(json.dumps(cfg.model_dump(), default=str))
    if found and found.record.get("config") != config:
        raise ValueError(f"task {' '.join(names)} of {printable(run_key)} has another configuration than the "
                         f"run {found.id} its first task started; give every task the same --config")
    run_dir, made = store.keyed_run(run_key, {"components_requested": list(STEPS), "config": config, **process})
    if not made:
        store.update_run(run_dir, **process, error=None, finished_at=None)
    return run_dir


DONE = ("succeeded", "cached")  # a step's status in run.json once its output is there


def _done_in(store: ArtifactStore, run_dir: Path) -> dict[str, Upstream]:
    """The outputs the run's earlier tasks made or reused, as their manifests record them."""
    found = {}
    for name, entry in store.run(run_dir.name).record.get("components", {}).items():
        if entry.get("status") in DONE:
            path = Path(entry["reused"]) if entry["status"] == "cached" else run_dir / name
            manifest = store.manifest(path)
            if manifest:
                found[name] = _output(path, manifest)
    return found


def _finished(store: ArtifactStore, run_dir: Path) -> bool:
    """Has every requested step of the run finished? Otherwise the run waits for its next task
    (and says so: no process of its lives between two tasks)."""
    record = store.run(run_dir.name).record
    entries = [record["components"].get(n) or {} for n in record.get("components_requested", [])]
    if all(e.get("status") in DONE for e in entries):
        return True
    other = next((e for e in entries if e.get("status") == "running" and process_alive(e)), None)
    if other:  # a task running beside this one: the run lives in its process now
        store.update_run(run_dir, pid=other["pid"], process_started=other["process_started"])
    else:
        store.update_run(run_dir, status="waiting")
    return False


class Terminated(BaseException):
    """SIGTERM (systemctl stop, a scheduler's timeout, kill) or SIGINT (Ctrl-C) arrived. A
    BaseException, as KeyboardInterrupt: no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal killed


@contextlib.contextmanager
def stoppable():
    """While held, SIGTERM and SIGINT raise Terminated in the main thread, so the run records
    where it stopped and the nightly can tell someone; a second signal during that clean-up
    acts as it would have (SIGTERM kills, SIGINT raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    if not getattr(previous[signal.SIGTERM], "stoppable", False):  # the outermost: a new stop to wait for
        _stop_requested.clear()

    def stop(signum, frame):
        for each, handler in previous.items():
            signal.signal(each, handler)
        _stop_requested.append(signum)
        raise Terminated(signum)

    stop.stoppable = True
    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_if_requested() -> None:
    """Raises Terminated again for a signal whose exception was swallowed where it landed: a
    handler's exception raised inside a destructor or a library's broad `except` is lost there,
    and the run must still stop before its next step (never push after a SIGTERM)."""
    if _stop_requested:
        raise Terminated(_stop_requested[0])


@contextlib.contextmanager
def temp_files_in(run_dir: Path):
    """Sends the libraries' temp files (Beam's pipeline folder, autograph's modules, ...) into
    the run while it runs, and removes them after: they clean up only at a clean exit, so a
    run killed mid-step leaves them in its own folder, never in the system temp dir."""
    temp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=run_dir))  # one per process: tasks of a run may run at once
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = os.environ["TMPDIR"] = str(temp)  # TMPDIR for the processes a step starts
    try:
        yield
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(temp, ignore_errors=True)


def _check_inputs(store: ArtifactStore, names: list[str]) -> None:
    missing: list[str] = []

    def need(component: str) -> None:
        for upstream in STEPS[component].inputs.values():
            if upstream not in names and upstream not in missing and store.latest(upstream) is None:
                need(upstream)
                missing.append(upstream)

    for name in names:
        need(name)
    if missing:
        order = [n for n in STEPS if n in missing]
        first = " && ".join(f"python -m pipeline run {n}" for n in order)
        raise MissingInputError(
            f"{names[0]} needs the output of {', '.join(order)}, and {store.runs_dir} has none; "
            f"run it first ({first}) or run the whole pipeline (python -m pipeline run)"
        )


class DamagedInputError(RuntimeError):
    """An upstream artifact's files do not match what its manifest recorded."""


def _upstream(store: ArtifactStore, component: str) -> Upstream:
    latest = store.latest(component)
    return _output(latest.path, latest.manifest)


def _output(path: Path, manifest: dict) -> Upstream:
    # Manifests written before content digests stand for their fingerprint.
    return Upstream(path, manifest["fingerprint"], manifest.get("content") or manifest["fingerprint"])


def _check_input(component: str, upstream: Upstream, *, full: bool = False) -> None:
    problem = damage(upstream.path, read_json(upstream.path / MANIFEST), full=full)
    if problem:
        raise DamagedInputError(f"the {component} output in {upstream.path} is damaged: {problem}; "
                                f"recompute it: python -m pipeline run --rerun {component}")


@contextlib.contextmanager
def _backup_for(step: Step, store: ArtifactStore, fp: str):
    """The step's backup folder, owned by this process while the step runs (an OS lock beside
    it): a second live training of the same model trains without one rather than share it."""
    if not step.resumes:
        yield {}
        return
    folder = store.backup_dir(fp)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(store.backup_lock(fp))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another live run is training the same model with the backup in %s; "
                    "this one trains without a backup (it cannot resume if killed)", folder)
        yield {}
        return
    try:
        yield {"backup_dir": folder}
    finally:
        lock.release()


def _run_step(store: ArtifactStore, run_dir: Path, step: Step, cfg: Config, ctx: RunContext,
              produced: dict[str, Upstream], *, use_cache: bool) -> Upstream:
    upstream = {arg: produced[up] if up in produced else _upstream(store, up) for arg, up in step.inputs.items()}
    params, key = step.configure(cfg, ctx, upstream)
    fp = cache.step_fingerprint(step, key, upstream)

    hit = store.find(step.name, fp) if use_cache else None
    if hit:
        store.update_run(run_dir, step.name, status="cached", reused=str(hit.path), from_run=hit.run_id, fingerprint=fp)
        log.info("%s cached (from run %s)", step.name, hit.run_id)
        manifest = hit.manifest
        _pass_gate(store, run_dir, step, hit.path, manifest["result"])
        return _output(hit.path, manifest)

    me = psutil.Process()
    store.update_run(run_dir, step.name, status="running", started_at=now(), fingerprint=fp, pid=me.pid,
                     process_started=me.create_time(),  # tasks of an orchestrated run may run at once
                     inputs={arg: str(u.path) for arg, u in upstream.items()})  # what retention must keep
    log.info("%s started", step.name)
    started, started_at = time.perf_counter(), now()
    try:
        for arg, up in upstream.items():  # cheaply, by size: a truncated file would fail deep inside TensorFlow
            _check_input(step.inputs[arg], up)
        with store.staging(run_dir, step.name) as scratch, _backup_for(step, store, fp) as extra:
            entry_point = getattr(importlib.import_module(step.module), step.name)
            result = entry_point(**{arg: u.path for arg, u in upstream.items()}, **{step.output: scratch},
                                 **params, **extra)
            duration = round(time.perf_counter() - started, 2)
            manifest = {
                "component": step.name,
                "run_id": run_dir.name,
                "status": "succeeded",
                "parameters": params,
                "key": key,
                "inputs": {arg: str(u.path) for arg, u in upstream.items()},
                "input_fingerprints": {arg: u.fingerprint for arg, u in upstream.items()},
                "input_digests": {arg: u.content for arg, u in upstream.items()},  # what the fingerprint hashed
                "fingerprint": fp,
                "started_at": started_at,
                "finished_at": now(),
                "duration_s": duration,
                "result": result,
                "versions": package_versions(),
                "files": file_records(scratch),  # checked before the output is reused
            }
            manifest["content"] = step.content(scratch, manifest["files"])
            (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    except BaseException as original:
        duration = round(time.perf_counter() - started, 2)
        err = _explained(original, step, upstream)
        store.update_run(run_dir, step.name, status="terminated" if isinstance(err, Terminated) else "failed",
                         duration_s=duration, error=error_line(err))
        log.error("%s %s after %.1fs: %s", step.name, "stopped" if isinstance(err, Terminated) else "failed", duration,
                  error_line(err, named=False))
        if err is original:
            raise
        raise err from original
    store.update_run(run_dir, step.name, status="succeeded", duration_s=duration)
    log.info("%s succeeded in %.1fs", step.name, duration)
    cache.note_same_content(store, step, manifest["content"], run_dir.name)
    _pass_gate(store, run_dir, step, run_dir / step.name, result)
    return _output(run_dir / step.name, manifest)


def _pass_gate(store: ArtifactStore, run_dir: Path, step: Step, output: Path, result: dict) -> None:
    """The step's gate (validate's: no data anomaly) on its whole output. A gate that stops the
    run makes the step `failed` in the run's record, as people read it; its output stays whole
    in the store (the manifest says succeeded) and is reused like any other."""
    if not step.gate:
        return
    try:
        step.gate(output, result)
    except Exception as err:
        store.update_run(run_dir, step.name, status="failed", gate="failed", error=error_line(err, named=False))
        raise


def _explained(err: BaseException, step: Step, upstream: dict[str, Upstream]) -> BaseException:
    """The error to report for a failed step, marked with the step: a damaged input (checked
    in full now) explains more than what TensorFlow said reading it."""
    if isinstance(err, Exception) and not isinstance(err, DamagedInputError):
        for arg, up in upstream.items():
            try:
                _check_input(step.inputs[arg], up, full=True)
            except DamagedInputError as damaged:
                err = damaged
                break
    err.component = step.name
    return err


def error_line(err: BaseException, *, named: bool = True, limit: int = 400) -> str:
    """An error as one line for the operator: its first line, cut at `limit` characters (a
    TensorFlow message can hold a hex dump), prefixed with the component it broke in."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, OSError) and err.errno == errno.ENOSPC and "No space left" not in first:
        first = f"No space left on device ({first})"  # h5py's words for it say only "write failed"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        first += "; free some space and run the same command again"
    first = printable(first)
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    component = getattr(err, "component", None)
    outcome = "stopped" if isinstance(err, Terminated) else "failed"
    return f"{component} {outcome}: {first}" if named and component else first


class OneLineFormatter(logging.Formatter):
    """LOG_FORMAT, with every control character of the message escaped: a file name or an error
    text from outside cannot start a line of its own (a forged event) or reach the terminal as
    an ANSI sequence. A traceback (--debug) is appended after it as usual."""

    def __init__(self):
        super().__init__(LOG_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def configure_logging(stream=None) -> None:
    """INFO to stderr (or `stream`) for our loggers; the libraries' INFO is per-bundle detail, not progress."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=stream is not None)
    for noisy in ("apache_beam", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def logging_to(path: Path):
    """Copies our loggers' lines into `path` (a run's run.log) while held, whatever the caller
    configured."""
    handler = logging.FileHandler(path)
    handler.setFormatter(OneLineFormatter())
    handler.setLevel(logging.INFO)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        handler.close()
