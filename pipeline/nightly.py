"""`python -m pipeline nightly`: the scheduled retrain nobody watches.

One exclusive lock per artifacts root (an OS file lock, released when its process dies,
however it dies); a second instance exits at once with EX_TEMPFAIL (75). The run itself
is an ordinary pipeline run: the cache reuses every component whose inputs did not
change, so a night with nothing new finishes in seconds, and a night after a killed one
reuses what that one finished and resumes its training from the last backed-up epoch.
Only a blessed model is pushed. Then retention runs, and the night is summed up in one
line on stdout and in `nightly_summary.json` in the run directory. Exit 0 when the night
worked (pushed or not), 1 when something broke: what cron and systemd alert on.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline import notify
from pipeline.config import Config
from pipeline.console import printable
from pipeline.graph import STEPS
from pipeline.lineage import pushed_version, pushes, result
from pipeline.store import MANIFEST, ArtifactStore, Run, now, read_json, write_json_atomic

log = logging.getLogger("pipeline")
EX_TEMPFAIL = 75
SUMMARY = "nightly_summary.json"
LOCK = "nightly.lock"  # in the artifacts root
SUMMARY_WAIT_S = 300


class NightlyBusy(RuntimeError):
    """Another nightly holds the lock."""


def nightly(cfg: Config, artifacts: Path, run_key: str | None = None) -> tuple[int, dict]:
    """Run one night; return (exit status, summary). With `run_key` an orchestrator has run the
    night's steps as tasks of that run, and this is its last task: it only sums the night up.
    The alert goes out after the lock is let go: a slow mail server never keeps the next night
    waiting."""
    from pipeline.runner import logging_to, stoppable

    # Summing up a night another DAG run's summary holds the lock for waits for it: seconds.
    with stoppable(), exclusive(artifacts, wait_s=SUMMARY_WAIT_S if run_key else 0):
        status, summary, line = _night(cfg, Path(artifacts), run_key)
    print(line, flush=True)
    run_dir = ArtifactStore(artifacts).runs_dir / summary["run_id"] if summary["run_id"] else None
    with logging_to(run_dir / "run.log") if run_dir else contextlib.nullcontext():  # undelivered: in run.log too
        notify.send(cfg.notify, summary, alert_text(summary, line))  # never raises: a failure is a warning line
    return status, summary


def _night(cfg: Config, artifacts: Path, run_key: str | None) -> tuple[int, dict, str]:
    from pipeline import retention
    from pipeline.runner import Terminated, error_line, model_base, run, stop_if_requested

    started = time.perf_counter()
    store = ArtifactStore(artifacts)
    orchestrated = store.keyed(run_key) if run_key else None
    interrupted = _interrupted_run(artifacts, before=orchestrated.id if orchestrated else None)
    if interrupted:
        log.warning("nightly: the last night's run %s was %s%s; its finished work is reused", interrupted["run"],
                    interrupted["status"], f" during {interrupted['step']}" if interrupted.get("step") else "")
    error, run_dir, status = None, None, 0
    if run_key:
        run_dir, status, error = _orchestrated_outcome(orchestrated, run_key)
    else:
        try:
            run_dir = run(cfg, artifacts)
            stop_if_requested()  # a signal whose exception a library swallowed during the last step
        except (Exception, Terminated) as err:  # the summary still gets written; the exit status says it broke
            error = error_line(err)
            status = err.exit_status if isinstance(err, Terminated) else 1
            log.error("nightly: the run %s: %s", "was stopped" if status > 1 else "failed", error)
            runs = store.runs()
            run_dir = runs[-1].path if runs else None
    inference = None
    if cfg.nightly.infer_dir and not error:
        try:
            inference, error = _score_inbox(cfg, artifacts)
            status = 1 if error else status
        except Terminated as stop:  # after the push: the night is still summed up and told
            error, status = f"scoring {cfg.nightly.infer_dir} stopped: {stop}", stop.exit_status
    deleted = 0
    if status <= 1:  # a stopped night leaves retention to the next one: it must end within seconds
        found = retention.plan(artifacts, model_base(cfg, artifacts), cfg.retention.keep_runs,
                               cfg.retention.keep_versions, active={run_dir.name} if run_dir else set())
        retention.apply(found)
        deleted = len(found.paths())
    summary = summarize(store.run(run_dir.name) if run_dir else None, error, interrupted,
                        _since(orchestrated.record.get("started_at")) if orchestrated else
                        round(time.perf_counter() - started, 1), deleted, stopped=status > 1,
                        served=served_now(model_base(cfg, artifacts)),
                        last_good=last_good_night(store, run_dir.name if run_dir else None))
    summary["inference"] = inference
    line = one_line(summary)
    if run_dir:
        write_json_atomic(run_dir / SUMMARY, summary)
        with open(run_dir / "run.log", "a") as run_log:  # the night's last word, beside its events
            run_log.write(f"{now()} INFO pipeline: {line}\n")
    return status, summary, line


def _since(started_at: str | None) -> float | None:
    """Seconds from a run's start (its tasks' time, and the orchestrator's between them) to now."""
    try:
        return round((datetime.now(timezone.utc) - datetime.fromisoformat(started_at)).total_seconds(), 1)
    except (TypeError, ValueError):
        return None


def _orchestrated_outcome(found: Run | None, run_key: str) -> tuple[Path | None, int, str | None]:
    """(run folder, exit status, error) of a night whose steps an orchestrator ran as tasks."""
    if found is None:
        error = f"no task of {printable(run_key)} ran (see the orchestrator's log of its first task)"
    elif found.status == "succeeded":
        return found.path, 0, None
    elif found.status == "terminated":
        return found.path, 143, found.record.get("error") or "stopped"
    else:
        error = found.record.get("error") or f"its tasks did not all finish (the run is {found.status})"
    log.error("nightly: the run failed: %s", error)
    return (found.path if found else None), 1, error


def _score_inbox(cfg: Config, artifacts: Path) -> tuple[dict | None, str | None]:
    """After the push: the served model scores the inbox (`nightly.infer_dir`), and the doubtful
    images wait in the inference folder's review queue for a person. (summary, error)."""
    from components import serving
    from pipeline.inference import run_inference
    from pipeline.runner import error_line, model_base

    if serving.current_version(model_base(cfg, artifacts)) is None:
        log.warning("nightly: nothing is served yet, so %s is not scored tonight", cfg.nightly.infer_dir)
        return {"skipped": "nothing served yet"}, None
    try:
        folder = run_inference(cfg, artifacts, [Path(cfg.nightly.infer_dir)])
    except Exception as err:
        error = f"scoring {cfg.nightly.infer_dir} failed: {error_line(err)}"
        log.error("nightly: %s", error)
        return None, error
    found = read_json(folder / MANIFEST)["result"]
    return {"folder": str(folder), **{k: found[k] for k in ("images", "queued", "already_known", "bad")}}, None


@contextmanager
def exclusive(artifacts: Path, wait_s: float = 0):
    """Holds the artifacts root's nightly lock, or raises NightlyBusy (at once, or after `wait_s`)."""
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    lock = FileLock(Path(artifacts) / LOCK)
    try:
        lock.acquire(timeout=wait_s)
    except Timeout:
        raise NightlyBusy(f"another nightly is running on {artifacts} (it holds {lock.lock_file}); "
                          f"this one exits, try again later") from None
    try:
        yield
    finally:
        lock.release()


def _interrupted_run(artifacts: Path, before: str | None = None) -> dict | None:
    """The newest run (before run `before`), if it did not finish: its process died (`crashed`,
    a kill -9 or a power cut, which could tell nobody) or was stopped by a signal
    (`terminated`); with the step it was in."""
    runs = [run for run in ArtifactStore(artifacts).runs() if before is None or run.id < before]
    last = runs[-1] if runs else None
    if last is None or last.status not in ("crashed", "terminated"):
        return None
    step = last.record.get("stopped_in") or next(
        (name for name, c in last.record.get("components", {}).items() if c.get("status") == "running"), None)
    return {"run": last.id, "status": last.status, "step": step}


def served_now(model_base: Path) -> dict | None:
    """The version serving now and its test accuracy, from its push record (the one record of
    what is served), whatever this night's blessing was judged against."""
    from components import serving

    version = serving.current_version(model_base)
    if version is None:
        return None
    return {"version": version, "accuracy": serving.read_push_record(model_base, version).get("test_accuracy")}


def last_good_night(store: ArtifactStore, before: str | None) -> dict | None:
    """The newest earlier night that succeeded, as its summary recorded it: what this night's
    data is compared with when it fails."""
    for run in reversed(store.runs()):
        if before and run.id >= before:
            continue
        summary = read_json(run.path / SUMMARY)
        if summary.get("status") == "succeeded":
            return {"run": run.id, "data": summary.get("data"), "pushed": summary.get("pushed")}
    return None


def next_step(summary: dict, failed_step: str | None) -> str | None:
    """The command a person runs next, for a night that did not end well."""
    run_id = summary["run_id"]
    if summary["status"] == "terminated":
        return "python -m pipeline nightly  (it resumes from the finished steps and the last finished epoch)"
    if summary["failed_checks"]:
        return (f"open {summary['report']}#validation; if the data is right after all, accept it for one night with "
                f"python -m pipeline nightly --set 'validation.warn_only=[...]'")
    if failed_step:
        return f"python -m pipeline show {run_id}; after the fix: python -m pipeline run --rerun {failed_step}"
    if summary["status"] != "succeeded":
        return f"python -m pipeline show {run_id}"
    return None


def summarize(run: Run | None, error: str | None, interrupted: dict | None, duration_s: float,
              deleted: int, *, stopped: bool = False, served: dict | None = None,
              last_good: dict | None = None) -> dict:
    from components.validate import anomaly_lines

    components = run.record.get("components", {}) if run else {}
    ingest, training, validation, blessing, export = (
        result(run, name) if run else {} for name in ("ingest", "train", "validate", "evaluate", "export"))
    extra = ingest.get("extra", {})
    splits = ingest.get("splits", {})
    trained_now = components.get("train", {}).get("status") == "succeeded"
    resumed_epoch = training.get("resumed_after_epoch", 0) if trained_now else 0
    export_entry = components.get("export", {})
    if error:
        pushed = f"not pushed: the run {'was stopped' if stopped else 'failed'} ({error})"
    elif export_entry.get("status") == "cached":
        pushed = f"not pushed: nothing changed since run {export_entry['from_run']}"
    elif export.get("pushed") and export_entry.get("status") == "succeeded":
        pushed = f"pushed version {export['version']}"
    elif export.get("not_pushed_because"):
        pushed = "not pushed: " + "; ".join(export["not_pushed_because"])
    else:
        pushed = f"not pushed: version {export.get('already_served')} already serves this model"
    failed_step = next((name for name, c in components.items() if c.get("status") in ("failed", "terminated")), None)
    summary = {
        "run_id": run.id if run else None,
        "status": "terminated" if stopped else "failed" if error else "succeeded",
        "error": error,
        "failed_step": failed_step,
        "failed_checks": anomaly_lines(validation) if validation and not validation.get("passed", True) else [],
        "components": {name: c.get("status") for name, c in components.items()},
        "data": {
            "train": splits.get("train", {}).get("count"),
            "extra_images": extra.get("count", 0),
            "test": splits.get("test", {}).get("count"),
            **({"held_out": extra["held_out"]["count"]} if "held_out" in extra else {}),  # the users' slice
        },
        "skipped_files": extra.get("skipped", []),
        "test_accuracy": (blessing.get("candidate") or {}).get("accuracy"),
        "baseline_accuracy": (blessing.get("baseline") or {}).get("accuracy"),  # what the blessing compared with
        "judged_against": (blessing.get("judged_against") or {}).get("version"),
        "served": served,  # what serves after this night, from its push record
        "slices": STEPS["evaluate"].summary(blessing).get("slices", {}),  # the users' slice, both models
        "pushed": pushed_version(run, pushes(run.path.parent.parent)) if run else None,  # its push record
        "warnings": blessing.get("warnings", []),
        "push_decision": pushed,
        "interrupted": interrupted,  # the last night, if it never finished: its alert, if any, is this one
        "resumed": {"from_run": interrupted["run"], "training_resumed_after_epoch": resumed_epoch} if interrupted else None,
        "duration_s": duration_s,
        "gc_deleted": deleted,
        "host": socket.gethostname(),
        "report": str(run.path / "report.html") if run else None,
        "last_good": last_good,
    }
    summary["next"] = next_step(summary, failed_step)
    return summary


def one_line(summary: dict) -> str:
    data = summary["data"]
    parts = [
        f"nightly {summary['status']}: run {summary['run_id']}",
        f"train {data['train']} (extra {data['extra_images']}"
        + (f", {data['held_out']} held out" if data.get("held_out") else "") + f") test {data['test']}",
        f"accuracy {_pct(summary['test_accuracy'])} vs {_judged(summary)} {_pct(summary['baseline_accuracy'])}",
        *(f"{name} slice {_pct(s['accuracy'])} vs {_judged(summary)} {_pct(s['served_accuracy'])} "
          f"({s['examples']} images)" for name, s in summary.get("slices", {}).items()),
        summary["push_decision"],
        (f"serving v{summary['served']['version']} ({_pct(summary['served']['accuracy'])})" if summary.get("served")
         else "nothing served"),
        f"{len(summary['skipped_files'])} bad file(s) skipped",
        f"{summary['duration_s']}s",
    ]
    if (summary.get("inference") or {}).get("folder"):
        scored = summary["inference"]
        parts.append(f"scored {scored['images']} inbox image(s), {scored['queued']} queued for review"
                     + (f" ({scored['already_known']} already labelled or queued)" if scored.get("already_known") else ""))
    if summary["interrupted"]:
        last = summary["interrupted"]
        parts.append(f"the last night's run {last['run']} was {last['status']}"
                     + (f" during {last['step']}" if last.get("step") else "")
                     + f", resumed (training after epoch {summary['resumed']['training_resumed_after_epoch']})")
    return printable("; ".join(parts))  # file names and error texts from outside: one line, escaped


def alert_text(summary: dict, line: str) -> str:
    """What a person is told: the summary line, and for a night that did not end well what
    failed, the data against the last good night, what serves, where to look and what to run."""
    if summary["status"] == "succeeded" and not summary.get("interrupted"):
        return line
    data = summary["data"]
    lines = [line]
    if summary.get("error"):
        lines.append(f"what failed: {summary['error']}")
    lines += [f"failed check: {check}" for check in summary.get("failed_checks", [])]
    counts = f"train {data['train']} (extra images {data['extra_images']}) test {data['test']}"
    last = summary.get("last_good")
    if last:
        before = last["data"] or {}
        counts += (f"; the last good night (run {last['run']}): train {before.get('train')} "
                   f"(extra images {before.get('extra_images')}) test {before.get('test')}")
    lines.append(f"data: {counts}")
    served = summary.get("served")
    lines.append(f"serving: version {served['version']}, test accuracy {_pct(served['accuracy'])}" if served
                 else "serving: nothing")
    lines.append(f"host {summary.get('host')}; report {summary.get('report')}")
    if summary.get("next"):
        lines.append(f"next: {summary['next']}")
    return "\n".join(printable(text) for text in lines)


def _judged(summary: dict) -> str:
    return f"v{summary['judged_against']}" if summary.get("judged_against") else "served"


def _pct(value) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) else "n/a"
