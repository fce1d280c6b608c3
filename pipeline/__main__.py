"""Command line: `python -m pipeline {run,models,rollback,predict,presets} ...`; see --help."""
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
    from pipeline.runner import STEPS

    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="artifacts root (default: artifacts/)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    configured = argparse.ArgumentParser(add_help=False)
    # Accepted after the sub-command too; SUPPRESS keeps a value given before it.
    configured.add_argument("--artifacts", type=Path, default=argparse.SUPPRESS, help="artifacts root (default: artifacts/)")
    configured.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a configuration key, e.g. --set train.epochs=3 (repeatable)")

    run = sub.add_parser("run", parents=[configured], help="run the pipeline, or one component of it")
    run.add_argument("component", nargs="?", choices=list(STEPS), help="run only this component, on the latest upstream artifacts")

    sub.add_parser("models", parents=[configured], help="list the served model versions")
    rollback = sub.add_parser("rollback", parents=[configured], help="serve an earlier version again")
    rollback.add_argument("version", nargs="?", type=int, help="default: the version the current one replaced")

    predict = sub.add_parser("predict", parents=[configured], help="classify image files (or folders of them) with a served model")
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    predict.add_argument("--model", help="served version number or SavedModel directory (default: the current version)")
    predict.add_argument("--json", action="store_true", help="one JSON object per image, with all ten probabilities")

    sub.add_parser("presets", help="list the model presets and their training settings")
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.runner import configure_logging

    args = _parser().parse_args(argv)
    configure_logging()
    try:
        return COMMANDS[args.command](args)
    except Exception as err:  # one line for the operator; --debug for the traceback
        if args.debug:
            log.exception("failed")
        message = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"error: {message}", file=sys.stderr)
        return 1


def _run(args) -> int:
    from pipeline.config import load_config
    from pipeline.runner import run

    cfg = load_config(args.overrides)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # progress bars garble unattended logs
    run_dir = run(cfg, args.artifacts, [args.component] if args.component else None)
    print(run_dir)
    return 0


def _model_base(args) -> Path:
    from pipeline.config import load_config
    from pipeline.runner import serving_root

    cfg = load_config(args.overrides)
    return serving_root(cfg, args.artifacts) / cfg.export.model_name


def _models(args) -> int:
    from components import serving

    base = _model_base(args)
    rows = serving.listing(base)
    if not rows:
        print(f"no served versions under {base}")
        return 0
    print(f"{'version':>7}  {'current':7}  {'pushed at':25}  {'test acc':8}  {'run':26}  note")
    for row in rows:
        note = f"rollback of {row['rollback_of']}" if row.get("rollback_of") else ""
        accuracy = f"{row['test_accuracy']:.4f}" if "test_accuracy" in row else "?"
        print(f"{row['version']:>7}  {'*' if row['current'] else '':7}  {row.get('pushed_at', '?'):25}  "
              f"{accuracy:8}  {row.get('run', '?'):26}  {note}")
    return 0


def _rollback(args) -> int:
    from components import serving

    base = _model_base(args)
    version = serving.rollback(base, args.version)
    log.info("now serving version %d (rollback of %d) from %s", version, serving.read_push_record(base, version)["rollback_of"], base)
    return 0


def _predict(args) -> int:
    from pipeline.predict import predict_files, resolve_model

    failures = predict_files(args.paths, resolve_model(args.model, _model_base(args)), as_json=args.json)
    return 1 if failures else 0


def _presets(args) -> int:
    import dataclasses

    from components.presets import PRESETS

    for name, preset in PRESETS.items():
        settings = {k: v for k, v in dataclasses.asdict(preset).items() if v is not None}
        print(f"{name:9} {json.dumps(settings)}")
    return 0


COMMANDS = {"run": _run, "models": _models, "rollback": _rollback, "predict": _predict, "presets": _presets}

if __name__ == "__main__":
    sys.exit(main())
