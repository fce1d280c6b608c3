"""The step graph as an Airflow 3 DAG (`python -m pipeline dag airflow`).

The DAG file `write` produces holds only settings and calls `build_dag`: the tasks and their
order come from `pipeline/graph.py` when Airflow parses the file, never from a second list.
One task per step (a PythonOperator running the step's command, no shell in between); with
`nightly` a last task sums the night up, whatever became of the steps (trigger rule
all_done), and tells people through `notify`: Airflow sends no mail of its own. One DAG run
at a time (`max_active_runs=1`), as the nightly lock has it; a retried task resumes (the
train step from its last backed-up epoch).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from pprint import pformat

from pipeline.graph import STEPS
from pipeline.orchestrators import NIGHTLY, TaskFailed, dependencies, run_task

FILE = '''"""MNIST pipeline{nightly_title} as an Airflow DAG, written by `python -m pipeline dag airflow`.

Regenerate it rather than edit it: the tasks and their order come from pipeline/graph.py, and each
task runs `python -m pipeline run STEP --run-key <this DAG run's run_id>` with the configuration
below on the artifacts root below, which every worker must see (a shared file system with atomic
renames and working file locks). The workers need this project installed: pip install '.[airflow]'.
"""
from pipeline.orchestrators.airflow_dag import build_dag

dag = build_dag(
    dag_id={dag_id!r},
    artifacts={artifacts!r},
    config={config},
    nightly={nightly!r},
    schedule={schedule!r},
    retries={retries!r},
    retry_delay_s={retry_delay_s!r},
)
'''


def cron(at: str) -> str:
    """`nightly.at` (HH:MM) as a cron expression."""
    hour, minute = at.split(":")
    return f"{int(minute)} {int(hour)} * * *"


def dag_file(*, dag_id: str, artifacts: Path, config: dict, nightly: bool,
             schedule: str | None, retries: int, retry_delay_s: int) -> str:
    """The DAG file's text. Every value is written as a Python literal (repr, pformat of plain
    data), so no configuration value can become code."""
    return FILE.format(nightly_title=", nightly retrain," if nightly else "", dag_id=dag_id, artifacts=str(artifacts),
                       config=pformat(config, width=100, sort_dicts=False).replace("\n", "\n    "),
                       nightly=nightly, schedule=schedule, retries=retries, retry_delay_s=retry_delay_s)


def build_dag(*, dag_id: str, artifacts: str, config: dict, nightly: bool, schedule: str | None,
              retries: int, retry_delay_s: int):
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG

    config_yaml = json.dumps(config)  # JSON is YAML: what each task's --config - reads

    with DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,  # a missed night is not made up for by a row of them
        max_active_runs=1,
        default_args={"retries": retries, "retry_delay": timedelta(seconds=retry_delay_s),
                      "email_on_failure": False, "email_on_retry": False},  # the pipeline's own alerts tell people
        tags=["mnist-pipeline"],
        doc_md=__doc__,
    ) as dag:
        tasks = {name: PythonOperator(task_id=name, python_callable=_task,
                                      op_kwargs={"step": name, "artifacts": artifacts, "config_yaml": config_yaml})
                 for name in STEPS}
        for name, upstream in dependencies().items():
            for up in upstream:
                tasks[up] >> tasks[name]
        if nightly:
            # Once, whatever the steps did: a retried summary would alert twice.
            summary = PythonOperator(task_id=NIGHTLY, python_callable=_task, trigger_rule="all_done", retries=0,
                                     op_kwargs={"step": NIGHTLY, "artifacts": artifacts, "config_yaml": config_yaml})
            list(tasks.values()) >> summary
    return dag


def _task(step: str, artifacts: str, config_yaml: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from airflow.sdk import get_current_context

    try:
        run_task(step, artifacts, get_current_context()["run_id"], config_yaml)
    except TaskFailed as failed:
        if failed.final:
            raise AirflowFailException(str(failed)) from None  # failed, not retried
        raise
