"""Command line: `python -m pipeline {run,nightly,runs,show,report,models,rollback,predict,infer,presets,gc,schedule,dag} ...`; see --help."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

# Before TensorFlow loads: keep its C++ start-up chatter out of the run log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger("pipeline")


def _parser() -> argparse.ArgumentParser:
    from pipeline.graph import STEPS

    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="artifacts root (default: artifacts/)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    configured = argparse.ArgumentParser(add_help=False)
    # Accepted after the sub-command too; SUPPRESS keeps a value given before it.
    configured.add_argument("--artifacts", type=Path, default=argparse.SUPPRESS, help="artifacts root (default: artifacts/)")
    configured.add_argument("--config", type=Path, metavar="FILE",
                            help="a YAML file in the shape of pipeline/defaults.yaml, over the defaults (--set goes on top)")
    configured.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a configuration key, e.g. --set train.epochs=3 (repeatable)")

    run = sub.add_parser("run", parents=[configured], help="run the pipeline, or one component of it")
    run.add_argument("component", nargs="?", choices=list(STEPS),
                     help="run only this component (always executes), on the latest upstream artifacts")
    run.add_argument("--no-cache", action="store_true", help="execute every component, reusing nothing")
    run.add_argument("--rerun", action="append", default=[], choices=list(STEPS), metavar="COMPONENT",
                     help="execute this component and everything downstream of it (repeatable)")
    run.add_argument("--run-key", metavar="KEY",
                     help="run the component as a task of the orchestrator's run KEY (Airflow's run_id, the Kubeflow "
                          "job's id): it joins the one run KEY stands for, reads what that run's earlier tasks made, "
                          "and is cached as in a whole run")

    nightly = sub.add_parser("nightly", parents=[configured],
                             help="the scheduled retrain: lock, run (cached), push if blessed, retention, summary")
    nightly.add_argument("--run-key", metavar="KEY",
                         help="only sum up the night an orchestrator ran as the tasks of its run KEY: inbox, "
                              "retention, summary, alerts")
    gc = sub.add_parser("gc", parents=[configured], help="delete old runs, versions and scratch per `retention`")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    schedule = sub.add_parser("schedule", parents=[configured], help="run the nightly every night: cron or systemd")
    what = schedule.add_mutually_exclusive_group(required=True)
    what.add_argument("--print", action="store_true", help="print the crontab line and the systemd units")
    what.add_argument("--install", choices=["cron", "systemd"], help="write the user crontab entry or unit files")
    schedule.add_argument("--at", help="time of day, HH:MM (default: nightly.at, 02:30)")
    dag = sub.add_parser("dag", parents=[configured],
                         help="write the step graph as an Airflow DAG file or a compiled Kubeflow pipeline")
    dag.add_argument("orchestrator", choices=["airflow", "kubeflow"])
    dag.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                     help="the DAG file (.py, into Airflow's dags folder) or the pipeline (.yaml, to upload to Kubeflow)")
    dag.add_argument("--retries", type=int, default=2,
                     help="retries of a failed task (default 2); a retried train task resumes from its last epoch")
    dag.add_argument("--nightly", action="store_true",
                     help="airflow: the nightly retrain, at nightly.at, with a last task that sums the night up and alerts")
    dag.add_argument("--schedule", metavar="CRON",
                     help="airflow: the DAG's schedule (default: none, triggered by hand; with --nightly, nightly.at)")
    dag.add_argument("--dag-id", help="airflow: the DAG's id (default: mnist_pipeline, with --nightly mnist_nightly)")
    dag.add_argument("--retry-delay", type=int, default=60, metavar="SECONDS",
                     help="airflow: seconds before a failed task is retried (default 60)")
    dag.add_argument("--image", help="kubeflow, required: the container image with this project installed (Dockerfile)")
    dag.add_argument("--pvc", default="mnist-artifacts",
                     help="kubeflow: the PersistentVolumeClaim holding the artifacts root, mounted in every task at "
                          "--artifacts, an absolute path (default: mnist-artifacts)")

    runs = sub.add_parser("runs", parents=[configured], help="list runs: status, preset, data, accuracy, push")
    runs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = sub.add_parser("show", parents=[configured],
                          help="one run's components and lineage, or (vN) where served version N came from")
    show.add_argument("target", metavar="RUN|vN", help="a run id (see `runs`) or a served version, e.g. v3")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")

    report = sub.add_parser("report", parents=[configured],
                            help="rebuild a run's report.html and the index of runs; print their paths")
    report.add_argument("run", nargs="?", help="a run id (default: the newest run); `all` rebuilds every run's")

    sub.add_parser("models", parents=[configured], help="list the served model versions")
    rollback = sub.add_parser("rollback", parents=[configured], help="serve an earlier version again")
    rollback.add_argument("version", nargs="?", type=int, help="default: the version the current one replaced")

    predict = sub.add_parser("predict", parents=[configured], help="classify image files (or folders of them) with a served model")
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    predict.add_argument("--model", help="served version number or SavedModel directory (default: the current version)")
    predict.add_argument("--json", action="store_true", help="one JSON object per image, with all ten probabilities")

    infer = sub.add_parser("infer", parents=[configured],
                           help="score a folder of images (or TFRecords) in batch; queue doubtful ones for labelling")
    infer.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files, TFRecord files or folders")
    infer.add_argument("--model", default="current",
                       help="current (default), a served version (3 or v3) or a SavedModel directory")

    sub.add_parser("presets", help="list the model presets and their training settings")
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.graph import EX_DATAERR, DataAnomalies
    from pipeline.nightly import EX_TEMPFAIL, NightlyBusy
    from pipeline.runner import Terminated, configure_logging, error_line

    args = _parser().parse_args(argv)
    if not args.debug and argv is None:  # the real command line, not a caller's in-process main()
        from pipeline.console import filter_native_logs

        filter_native_logs()
    configure_logging()
    try:
        return COMMANDS[args.command](args)
    except NightlyBusy as busy:  # not a failure: cron and systemd retry EX_TEMPFAIL later
        print(f"error: {busy}", file=sys.stderr)
        return EX_TEMPFAIL
    except DataAnomalies as anomalies:
        print(f"error: {error_line(anomalies)}", file=sys.stderr)
        return EX_DATAERR
    except Terminated as stop:  # recorded in the run as `terminated`; the status a shell gives a signalled process
        print(f"error: {stop}; the run is recorded as terminated", file=sys.stderr)
        return stop.exit_status
    except Exception as err:  # one line for the operator; --debug for the traceback
        if args.debug:
            log.exception("failed")
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 1


def _run(args) -> int:
    from pipeline.config import load_config
    from pipeline.runner import run

    cfg = load_config(args.overrides, args.config)
    if args.run_key and not args.component:
        raise ValueError("--run-key runs one component as an orchestrator's task; name it, e.g. run train --run-key KEY")
    run_dir = run(cfg, args.artifacts, [args.component] if args.component else None,
                  use_cache=not args.no_cache, rerun=args.rerun, run_key=_checked_key(args.run_key))
    print(run_dir)
    return 0


def _model_base(args) -> Path:
    from pipeline.config import load_config
    from pipeline.runner import model_base

    return model_base(load_config(args.overrides, args.config), args.artifacts)


def _runs(args) -> int:
    from pipeline import lineage

    rows = lineage.runs(args.artifacts)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'run':26}  {'started':25}  {'status':9}  {'preset':8}  {'train':>6}  {'test':>5}  {'test acc':8}  pushed")
    for row in rows:
        accuracy = f"{row['test_accuracy']:.4f}" if row["test_accuracy"] is not None else "-"
        print(f"{row['run']:26}  {row['started_at'] or '?':25}  {row['status']:9}  {row['preset'] or '?':8}  "
              f"{row['train'] if row['train'] is not None else '-':>6}  {row['test'] if row['test'] is not None else '-':>5}  "
              f"{accuracy:8}  {row['pushed'] or '-'}")
    return 0


def _report(args) -> int:
    from pipeline import report
    from pipeline.store import ArtifactStore

    store = ArtifactStore(args.artifacts)
    runs = store.runs()
    if not runs:
        raise FileNotFoundError(f"no runs in {args.artifacts}; run the pipeline first (python -m pipeline run)")
    chosen = runs if args.run == "all" else [store.run(args.run)] if args.run else runs[-1:]
    for run in chosen:
        print(report.build_report(run.path))
    print(report.build_index(args.artifacts, _model_base(args)))
    return 0


def _show(args) -> int:
    from pipeline import lineage

    target = args.target
    if target[:1] in "vV" and target[1:].isdigit():
        shown = lineage.show_version(args.artifacts, _model_base(args), int(target[1:]))
    else:
        shown = lineage.show_run(args.artifacts, target)
    if args.json:
        print(json.dumps(shown, indent=2))
    elif "lineage" in shown:
        push = shown["push"]
        print(f"served version {shown['version']} ({shown['path']}): run {push.get('run', '?')}, "
              f"pushed {push.get('pushed_at', '?')}, test accuracy {push.get('test_accuracy', '?')}"
              + (f", rollback of {push['rollback_of']}" if push.get("rollback_of") else ""))
        for step in shown["lineage"]:
            print(f"  <- {step['component']:10} run {step['run']}  {step['fingerprint']}  {json.dumps(step['results'])}")
    else:
        print(f"run {shown['run']}: {shown['status']} (started {shown['started_at']}, finished {shown['finished_at']})")
        for name, c in shown["components"].items():
            origin = f"cached from run {c['from_run']}" if c["status"] == "cached" else c["status"]
            print(f"  {name:10} {origin:40} {c['duration_s'] if c['duration_s'] is not None else '-':>8}s  {c['fingerprint']}")
            for arg, source in c["inputs"].items():
                print(f"      input {arg}: run {source['run']} ({source['path']})")
            print(f"      parameters: {json.dumps(c['parameters'], default=str)}")
            print(f"      results: {json.dumps(c['results'], default=str)}")
            if c.get("error"):
                print(f"      error: {c['error']}")
    return 0


def _nightly(args) -> int:
    from pipeline.config import load_config
    from pipeline.nightly import nightly
    from pipeline.runner import configure_logging

    configure_logging(sys.stdout)  # unattended: the log and the summary in one stream, one line per event
    return nightly(load_config(args.overrides, args.config), args.artifacts, _checked_key(args.run_key))[0]


def _checked_key(key: str | None) -> str | None:
    """An orchestrator's run id, kept in run.json and compared, never a path: bounded, printable."""
    from pipeline.console import printable

    if key is not None and (not key or len(key) > 250 or printable(key) != key):
        raise ValueError(f"--run-key {printable(key)[:60]!r}: give the orchestrator's run id, one printable line "
                         f"of at most 250 characters")
    return key


def _gc(args) -> int:
    from pipeline import retention
    from pipeline.config import load_config
    from pipeline.nightly import exclusive

    cfg = load_config(args.overrides, args.config)
    with exclusive(args.artifacts):  # never while a nightly is running
        found = retention.plan(args.artifacts, _model_base(args), cfg.retention.keep_runs, cfg.retention.keep_versions)
        sizes = {path: retention.tree_bytes(path) for path in found.paths()}
        for path, size in sizes.items():
            print(f"{'would delete' if args.dry_run else 'deleting'} {path} ({_size(size)}): {found.why.get(path, '')}")
        if not args.dry_run:
            retention.apply(found)
    freed = _size(sum(sizes.values()))
    print(f"{len(sizes)} to delete, {freed}" if args.dry_run else f"{len(sizes)} deleted, {freed} freed")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _schedule(args) -> int:
    from pipeline import schedule
    from pipeline.config import load_config

    cfg = load_config(args.overrides, args.config)  # a schedule whose settings are wrong would fail every night
    files = schedule.schedule_files(Path.cwd(), args.artifacts, args.at or cfg.nightly.at, args.overrides, args.config)
    if args.print:
        for name, text in files.items():
            print(f"# --- {name}\n{text}")
        return 0
    if args.install == "cron":
        print(f"installed in the {schedule.install_cron(files['crontab'], Path.cwd())}: {files['crontab']}", end="")
    else:
        where = schedule.install_systemd(files)
        print(f"wrote {schedule.UNIT}.service and .timer to {where}; "
              f"start it with: systemctl --user daemon-reload && systemctl --user enable --now {schedule.UNIT}.timer")
    return 0


def _dag(args) -> int:
    import re

    from pipeline.config import load_config

    cfg = load_config(args.overrides, args.config)  # the whole file validated now, not on the first worker
    config = cfg.model_dump(mode="json")  # what every task reads: the values, not the file's path
    airflow_only = [f"--{name.replace('_', '-')}" for name in ("nightly", "schedule", "dag_id")
                    if getattr(args, name) not in (None, False)]
    if args.retries < 0 or args.retry_delay < 0:
        raise ValueError("--retries and --retry-delay count, from 0")
    if args.orchestrator == "airflow":
        from pipeline.orchestrators.airflow_dag import cron, dag_file
        from pipeline.store import write_atomic

        if args.image:
            raise ValueError("--image is for kubeflow; Airflow's workers run the project installed beside Airflow")
        dag_id = args.dag_id or ("mnist_nightly" if args.nightly else "mnist_pipeline")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", dag_id):
            raise ValueError(f"--dag-id {dag_id[:60]!r}: Airflow takes letters, digits, '_', '.' and '-'")
        schedule = args.schedule or (cron(cfg.nightly.at) if args.nightly else None)
        if schedule is not None and not re.fullmatch(r"[ -~]{1,100}", schedule):
            raise ValueError(f"--schedule {schedule[:60]!r}: give a cron expression or a preset such as @daily")
        write_atomic(args.output, dag_file(dag_id=dag_id, artifacts=args.artifacts.resolve(), config=config,
                                           nightly=args.nightly, schedule=schedule, retries=args.retries,
                                           retry_delay_s=args.retry_delay).encode())
    else:
        from pipeline.orchestrators.kubeflow_pipeline import compile_pipeline

        if airflow_only:
            raise ValueError(f"{airflow_only[0]} is for airflow; schedule a Kubeflow pipeline as a recurring run")
        if not args.image or not re.fullmatch(r"[\w./:@-]{1,255}", args.image):
            raise ValueError("--image: name the container image with this project installed, e.g. "
                             "registry.example.com/mnist-pipeline:1 (build it with the Dockerfile)")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", args.pvc):
            raise ValueError(f"--pvc {args.pvc[:60]!r} is not a Kubernetes name (lower-case letters, digits, '-')")
        if not args.artifacts.is_absolute():
            raise ValueError("--artifacts: for kubeflow, the absolute path the claim is mounted at in every task, "
                             "e.g. --artifacts /mnt/artifacts")
        compile_pipeline(args.output, image=args.image, artifacts=args.artifacts.as_posix(), pvc=args.pvc,
                         config=config, retries=args.retries)
    print(args.output)
    return 0


def _models(args) -> int:
    from components import serving
    from pipeline import lineage
    from pipeline.console import printable

    base = _model_base(args)
    rows = serving.listing(base)
    for other in lineage.served_elsewhere(args.artifacts, base):
        print(f"also served: {len(serving.versions(other))} version(s) under {printable(other)}; "
              f"list them with {printable(lineage.elsewhere_hint(other))}")
    if not rows:
        print(f"no served versions under {base}")
        return 0
    print(f"{'version':>7}  {'current':7}  {'pushed at':25}  {'test acc':8}  {'run':26}  note")
    for row in rows:
        note = f"rollback of {row['rollback_of']}" if row.get("rollback_of") else ""
        if row["broken"]:
            note = f"BROKEN: {row['broken']}; the next blessed model is pushed above it" + (f"; {note}" if note else "")
        accuracy = f"{row['test_accuracy']:.4f}" if "test_accuracy" in row else "?"
        print(printable(f"{row['version']:>7}  {'*' if row['current'] else '':7}  {row.get('pushed_at', '?'):25}  "
                        f"{accuracy:8}  {row.get('run', '?'):26}  {note}"))
    return 0


def _rollback(args) -> int:
    from components import serving
    from pipeline import lineage

    base = _model_base(args)
    others = lineage.served_elsewhere(args.artifacts, base)
    if not serving.versions(base) and others:
        raise serving.ServingError(f"no served versions under {base}, but runs pushed to {others[0]}; "
                                   f"roll back there with {lineage.elsewhere_hint(others[0])}")
    version = serving.rollback(base, args.version)
    log.info("now serving version %d (rollback of %d) from %s", version, serving.read_push_record(base, version)["rollback_of"], base)
    return 0


def _predict(args) -> int:
    from pipeline.predict import predict_files, resolve_model

    failures = predict_files(args.paths, resolve_model(args.model, _model_base(args)), as_json=args.json)
    return 1 if failures else 0


def _infer(args) -> int:
    from pipeline.config import load_config
    from pipeline.inference import run_inference
    from pipeline.store import MANIFEST, read_json

    folder = run_inference(load_config(args.overrides, args.config), args.artifacts, args.inputs, args.model)
    summary = read_json(folder / MANIFEST)["result"]
    print(f"{folder}: {summary['images']} image(s) scored, {summary['queued']} queued for review in "
          f"{folder / 'review'} ({summary.get('already_known', 0)} already labelled or queued, not again), "
          f"{summary['bad']} bad file(s) listed in {folder / 'bad_files.jsonl'}; the queue's page: "
          f"{folder / 'review.html'}")
    return 0


def _presets(args) -> int:
    import dataclasses

    from components.training.presets import PRESETS

    for name, preset in PRESETS.items():
        settings = {k: v for k, v in dataclasses.asdict(preset).items() if v is not None}
        print(f"{name:9} {json.dumps(settings)}")
    return 0


COMMANDS = {"run": _run, "runs": _runs, "show": _show, "report": _report, "nightly": _nightly, "gc": _gc, "schedule": _schedule, "models": _models, "rollback": _rollback, "predict": _predict, "infer": _infer, "presets": _presets, "dag": _dag}

if __name__ == "__main__":
    sys.exit(main())
