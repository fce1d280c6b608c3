"""The step graph handed to an orchestrator: Airflow (`airflow_dag`) or Kubeflow Pipelines
(`kubeflow_pipeline`), written by `python -m pipeline dag`.

One task per step of `pipeline/graph.py`, waiting for `graph.upstream_steps`; each task is the
command `python -m pipeline run STEP --run-key KEY --config -`, in a process of its own, so it
does exactly what the runner does (fingerprints, cache, early cutoff, manifests, the push lock
and the blessing re-check). KEY is the orchestrator's id of the DAG run: every task of it joins
the one run of ours it stands for. The configuration travels as its content on the command's
standard input, never as a path that may not exist on the worker.
"""
from __future__ import annotations

import subprocess
import sys
from collections import deque

from pipeline.graph import EX_DATAERR, STEPS, upstream_steps

NIGHTLY = "nightly"  # the task after the steps that sums a night up (inbox, retention, summary, alerts)
STOP_GRACE_S = 60  # a stopped task's command has this long to record where it stopped


class TaskFailed(RuntimeError):
    """A step's command exited with an error; its last line says why."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.final = status == EX_DATAERR  # the data failed validation: a retry would fail the same way


def dependencies() -> dict[str, list[str]]:
    """Each step's task and the tasks it waits for, in the graph's order."""
    return {name: upstream_steps(name) for name in STEPS}


def task_command(step: str, artifacts: str, run_key: str) -> list[str]:
    """The command of one task: a step of the run `run_key`, or the night's summing up."""
    what = ["nightly"] if step == NIGHTLY else ["run", step]
    return [sys.executable, "-m", "pipeline", "--artifacts", artifacts, *what, "--run-key", run_key, "--config", "-"]


def run_task(step: str, artifacts: str, run_key: str, config_yaml: str) -> None:
    """Runs a task's command with the configuration on its standard input; its log goes to the
    orchestrator's task log as it comes. Raises TaskFailed with the command's last line. A task
    the orchestrator stops (SIGTERM: a timeout, a cleared task) stops its command too, which
    records the run as terminated."""
    command = subprocess.Popen(task_command(step, artifacts, run_key), stdin=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, errors="replace")
    last = deque(maxlen=1)
    try:
        command.stdin.write(config_yaml)
        command.stdin.close()
        for line in command.stderr:
            sys.stderr.write(line)
            if line.strip():
                last.append(line.strip())
        status = command.wait()
    finally:
        if command.poll() is None:
            command.terminate()
            try:
                command.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                command.kill()
                command.wait()
    if status != 0:
        raise TaskFailed(f"{step} exited with status {status}: {last[0] if last else 'no output'}", status)
