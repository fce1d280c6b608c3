"""The same slice under the pipeline's runner, Airflow and Kubeflow Pipelines: wall seconds.

    python -m benchmarks.orchestrators [--set KEY=VALUE ...] [--artifacts DIR]

For each way, a fresh artifacts root and two runs of the whole step graph, the second cached
throughout: `python -m pipeline run`; the DAG of `python -m pipeline dag airflow` run by
`airflow dags test` (an Airflow home of its own under DIR, its SQLite database made first, not
timed); the pipeline of `dag kubeflow` run by `kfp.local` without Docker. TFDS prepares MNIST
once, before any is timed. Needs the airflow and kubeflow extras.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import print_table, write_json

COLUMNS = ("how", "first_s", "cached_s", "runs", "second_run")
SLICE = {"ingest.train_split": "train[:2000]", "ingest.test_split": "test[:500]", "train.preset": "seed-000",
         "train.epochs": "2", "evaluate.min_accuracy": "0.5", "export.verify_examples": "64"}
KFP_RUN = ("import sys; from kfp import components, local; "
           "local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[2]); "
           "components.load_component_from_file(sys.argv[1])()")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.orchestrators", description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/benchmarks/orchestrators"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    bench = args.artifacts.resolve()
    shutil.rmtree(bench, ignore_errors=True)
    (bench / "tmp").mkdir(parents=True)
    chosen = {**SLICE, "ingest.data_dir": str(bench / "tfds"),
              **dict(o.split("=", 1) for o in args.overrides)}
    settings = [a for k, v in chosen.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "TMPDIR": str(bench / "tmp"), "AIRFLOW_HOME": str(bench / "airflow"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(bench / "airflow" / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    pipeline = [sys.executable, "-m", "pipeline"]
    subprocess.run([*pipeline, "--artifacts", str(bench / "warm-up"), "run", "ingest", *settings], env=env,
                   check=True, capture_output=True)  # TFDS prepares MNIST here, not in a timed run
    (bench / "airflow" / "dags").mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([*pipeline, "--artifacts", str(bench / "airflow-root"), "dag", "airflow", "-o",
                    str(bench / "airflow" / "dags" / "mnist_pipeline.py"), *settings], env=env, check=True)
    subprocess.run([*pipeline, "--artifacts", str(bench / "kubeflow-root"), "dag", "kubeflow", "--image",
                    "mnist-pipeline:bench", "-o", str(bench / "mnist_pipeline.yaml"), *settings], env=env, check=True)
    ways = {
        "python -m pipeline run": (bench / "run-root", [*pipeline, "--artifacts", str(bench / "run-root"), "run",
                                                         *settings]),
        "airflow dags test": (bench / "airflow-root", [sys.executable, "-m", "airflow", "dags", "test",
                                                       "mnist_pipeline"]),
        "kfp.local": (bench / "kubeflow-root", [sys.executable, "-c", KFP_RUN, str(bench / "mnist_pipeline.yaml"),
                                                str(bench / "kfp-root")]),
    }
    rows = []
    for how, (root, command) in ways.items():
        seconds = []
        for _ in range(2):
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True, capture_output=True)
            seconds.append(round(time.perf_counter() - started, 2))
        runs = sorted((root / "runs").glob("*/run.json"))
        second = json.loads(runs[-1].read_text())
        statuses = sorted({c["status"] for c in second["components"].values()})
        rows.append({"how": how, "first_s": seconds[0], "cached_s": seconds[1], "runs": len(runs),
                     "second_run": f"{second['status']}, steps {'/'.join(statuses)}"})
        print_table(rows[-1:], COLUMNS)
    print_table(rows, COLUMNS, title="orchestrators")
    write_json(bench / "orchestrators.json", "orchestrators", overrides=args.overrides, rows=rows)
    shutil.rmtree(bench / "tmp")  # KFP's components leave their programs there
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
