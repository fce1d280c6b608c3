"""Runs a DAG file once with Airflow's own `dag.test()`, in the AIRFLOW_HOME of the environment
(its database made by `airflow db migrate`), and prints as one JSON line the DAG run's id and
state, each task's state and tries, and what each task waits for. A process of its own: Airflow
reads its settings once, when it is imported."""
import importlib.util
import json
import sys

spec = importlib.util.spec_from_file_location("dag_file", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
run = module.dag.test()
print(json.dumps({
    "run_id": run.run_id,
    "state": str(run.state),
    "tasks": {ti.task_id: {"state": str(ti.state), "tries": ti.try_number} for ti in run.get_task_instances()},
    "upstream": {task.task_id: sorted(task.upstream_task_ids) for task in module.dag.tasks},
    "max_active_runs": module.dag.max_active_runs,
    "schedule": str(module.dag.schedule),
}))
