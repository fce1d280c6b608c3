"""Airflow and Kubeflow Pipelines run the one step graph: `python -m pipeline dag` writes a DAG
file or a compiled pipeline from pipeline/graph.py, and each task is the runner's own command, so
a DAG run makes what `python -m pipeline run` makes on the same settings, as one run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import REPO, small_overrides
from pipeline.__main__ import main
from pipeline.graph import STEPS, upstream_steps
from pipeline.store import ArtifactStore, read_json

DEADLINE_S = 600


def _settings(tfds_dir, **extra) -> list[str]:
    return [a for o in small_overrides(tfds_dir, **extra) for a in ("--set", o)]


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict:
    """An Airflow home of the test's own: its SQLite database made by `airflow db migrate`, its
    dags folder, and a temp dir inside it, so nothing is left outside."""
    home = tmp_path_factory.mktemp("airflow")
    (home / "dags").mkdir()
    (home / "tmp").mkdir()
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "TMPDIR": str(home / "tmp"),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    return env


def _dag_test(dag_file: Path, env: dict, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "run_airflow_dag.py"), str(dag_file)], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _outcome(child: subprocess.Popen) -> dict:
    out, err = child.communicate(timeout=DEADLINE_S)
    assert child.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _same_as_pipeline_run(run_dir: Path, reference: Path) -> None:
    """A DAG run made what `python -m pipeline run` made on the same settings: the same work (the
    fingerprints of the steps up to train: code, settings, inputs), the same data bytes, the same
    metrics, blessing and push. (A trained model's folder holds its timings and TensorBoard
    events, so its bytes, and the fingerprints after it, differ from one training to the next.)"""
    manifests = {name: (read_json(run_dir / name / "manifest.json"), read_json(reference / name / "manifest.json"))
                 for name in STEPS}
    for name in ("ingest", "preprocess", "validate", "train"):
        assert manifests[name][0]["fingerprint"] == manifests[name][1]["fingerprint"], name
    for name in ("ingest", "preprocess", "validate"):
        assert manifests[name][0]["content"] == manifests[name][1]["content"], name
    evaluation, expected = (m["result"] for m in manifests["evaluate"])
    assert evaluation["candidate"]["accuracy"] == expected["candidate"]["accuracy"]
    assert evaluation["blessed"] == expected["blessed"] is True
    assert {k: manifests["export"][0]["result"][k] for k in ("pushed", "version")} == {"pushed": True, "version": 1}
    served, reference_push = (read_json(r.parent.parent / "serving" / "mnist" / "1" / "assets.extra" / "push.json")
                              for r in (run_dir, reference))
    assert served["run"] == run_dir.name and served["test_accuracy"] == reference_push["test_accuracy"]
    assert sorted(p.name for p in (run_dir.parent.parent / "serving" / "mnist").iterdir() if p.name.isdigit()) == ["1"]


@pytest.fixture(scope="module")
def airflow_run(full_run, tfds_dir, airflow_env, tmp_path_factory):
    """The pipeline DAG written by `dag airflow` and run twice with dag.test() on the session's
    slice: (artifacts root, the two DAG runs' outcomes)."""
    root = tmp_path_factory.mktemp("airflow-artifacts")
    dag_file = Path(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"]) / "mnist_pipeline.py"
    assert main(["--artifacts", str(root), "dag", "airflow", "-o", str(dag_file), "--retry-delay", "1",
                 *_settings(tfds_dir)]) == 0
    first = _outcome(_dag_test(dag_file, airflow_env))
    second = _outcome(_dag_test(dag_file, airflow_env))
    return root, first, second


def test_the_airflow_dag_runs_the_step_graph_as_pipeline_run_does_and_then_from_the_cache(full_run, airflow_run):
    root, first, second = airflow_run
    assert first["upstream"] == {name: sorted(upstream_steps(name)) for name in STEPS}  # from graph.py
    assert first["max_active_runs"] == 1 and first["schedule"] == "None"
    assert first["state"] == "success"
    assert all(t == {"state": "success", "tries": 1} for t in first["tasks"].values()), first["tasks"]
    # Run alone, the runs so far: the first DAG run is one run of ours, keyed by Airflow's run id.
    store = ArtifactStore(root)
    runs = store.runs()
    assert [r.record["orchestrator_run"] for r in runs] == [first["run_id"], second["run_id"]]
    fresh, cached = runs
    assert {n: c["status"] for n, c in fresh.record["components"].items()} == dict.fromkeys(STEPS, "succeeded")
    _same_as_pipeline_run(fresh.path, full_run[1])
    # The second DAG run: every task cached, one more run, nothing pushed again.
    assert second["state"] == "success" and cached.status == "succeeded"
    assert {n: c["status"] for n, c in cached.record["components"].items()} == dict.fromkeys(STEPS, "cached")
    assert {c["from_run"] for c in cached.record["components"].values()} == {fresh.id}
    assert (cached.path / "report.html").is_file() and (root / "index.html").is_file()


def _copy(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "artifacts"
    shutil.copytree(root, copy)
    return copy


def test_the_kubeflow_pipeline_compiles_the_step_graph_and_runs_under_kfp_local(airflow_run, tfds_dir, tmp_path,
                                                                                   monkeypatch):
    """Compiled from the one graph, run by KFP's local runner on a copy of the Airflow DAG's
    artifacts: every task finds its step done with the same code, settings and inputs there, so
    the configuration and run key reached each task intact; the steps' own work under a task's
    command is the Airflow test's (the same `run STEP --run-key` command)."""
    from kfp import components, local

    root, spec = _copy(airflow_run[0], tmp_path), tmp_path / "mnist_pipeline.yaml"
    image = "registry.example.com/mnist-pipeline:1"
    assert main(["--artifacts", str(root), "dag", "kubeflow", "--image", image, "--pvc", "mnist-artifacts",
                 "-o", str(spec), *_settings(tfds_dir)]) == 0
    pipeline, platform = yaml.safe_load_all(spec.read_text())
    tasks = pipeline["root"]["dag"]["tasks"]
    assert set(tasks) == set(STEPS)
    assert {name: sorted(t.get("dependentTasks", [])) for name, t in tasks.items()} == \
        {name: sorted(upstream_steps(name)) for name in STEPS}
    executors = pipeline["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {image}
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {name: (m["pvcMount"][0]["constant"], m["pvcMount"][0]["mountPath"]) for name, m in mounts.items()} == \
        {f"exec-{name}": ("mnist-artifacts", str(root)) for name in STEPS}
    assert all(t["retryPolicy"]["maxRetryCount"] == 2 for t in tasks.values())

    # KFP's local runner, without Docker: the component's shell writes its program under TMPDIR.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
    components.load_component_from_file(str(spec))()
    fresh, _, kfp_run = ArtifactStore(root).runs()  # the Airflow DAG's two runs, then this one
    assert kfp_run.status == "succeeded"
    assert kfp_run.record["orchestrator_run"] not in ("", None, airflow_run[1]["run_id"], airflow_run[2]["run_id"])
    assert {n: (c["status"], c["from_run"]) for n, c in kfp_run.record["components"].items()} == \
        dict.fromkeys(STEPS, ("cached", fresh.id))
    assert (kfp_run.path / "report.html").is_file()


def _task_process(step: str) -> psutil.Process | None:
    """The live process of a task's command (`python -m pipeline ... run STEP --run-key ...`)."""
    for process in psutil.process_iter(["cmdline"]):
        line = process.info["cmdline"] or []
        if "pipeline" in line and "--run-key" in line and line[line.index("--run-key") - 1] == step:
            return process
    return None


def test_a_train_task_killed_mid_training_is_retried_and_resumes_from_its_backup(airflow_run, airflow_env,
                                                                                   tfds_dir, tmp_path):
    root = _copy(airflow_run[0], tmp_path)
    dag_file = Path(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"]) / "mnist_retried.py"
    assert main(["--artifacts", str(root), "dag", "airflow", "--dag-id", "mnist_retried", "-o", str(dag_file),
                 "--retries", "1", "--retry-delay", "1", *_settings(tfds_dir, **{"train.epochs": 8})]) == 0
    child = _dag_test(dag_file, airflow_env)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not list((root / "backups").glob("*/epoch/training_metadata.json")):  # an epoch backed up
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()[-3000:]
            time.sleep(0.05)
        task = _task_process("train")
        assert task is not None
        task.send_signal(signal.SIGKILL)
        outcome = _outcome(child)
    finally:
        dag_file.unlink()
        if child.poll() is None:
            child.kill()
    assert outcome["state"] == "success" and outcome["tasks"]["train"] == {"state": "success", "tries": 2}
    run = ArtifactStore(root).runs()[-1]
    assert run.record["orchestrator_run"] == outcome["run_id"] and run.status == "succeeded"
    training = read_json(run.path / "train" / "manifest.json")["result"]
    assert training["resumed_after_epoch"] >= 1 and training["epochs_run"] == 8


def test_two_overlapping_nightly_dag_runs_never_both_push(airflow_run, airflow_env, tfds_dir, tmp_path):
    """Airflow keeps one nightly DAG run at a time (max_active_runs); two schedulers (two Airflow
    databases here) on one artifacts root still serve one model, judged against what it replaces."""
    root = _copy(airflow_run[0], tmp_path)
    homes = [Path(airflow_env["AIRFLOW_HOME"]), tmp_path / "second-airflow"]
    shutil.copytree(homes[0], homes[1], ignore=shutil.ignore_patterns("dags", "logs"))
    (homes[1] / "dags").mkdir()
    children = []
    for n, home in enumerate(homes):
        env = {**airflow_env, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}
        dag_file = home / "dags" / f"mnist_nightly_{n}.py"
        assert main(["--artifacts", str(root), "dag", "airflow", "--nightly", "--dag-id", f"mnist_nightly_{n}",
                     "-o", str(dag_file), *_settings(tfds_dir, **{"train.epochs": 3})]) == 0
        children.append((_dag_test(dag_file, env), dag_file))
    try:
        outcomes = [_outcome(child) for child, _ in children]
    finally:
        for child, dag_file in children:
            dag_file.unlink()
            if child.poll() is None:
                child.kill()
    assert outcomes[0]["max_active_runs"] == 1 and outcomes[0]["schedule"] == "30 2 * * *"  # nightly.at
    assert all(o["state"] == "success" and o["tasks"]["nightly"]["state"] == "success" for o in outcomes)
    store = ArtifactStore(root)
    nights = [store.keyed(o["run_id"]) for o in outcomes]
    assert all(night.status == "succeeded" for night in nights)
    summaries = [read_json(night.path / "nightly_summary.json") for night in nights]
    assert sorted(s["pushed"] or 0 for s in summaries) == [0, 2], [s["push_decision"] for s in summaries]
    assert sorted(p.name for p in (root / "serving" / "mnist").iterdir() if p.name.isdigit()) == ["1", "2"]
    pushed = read_json(root / "serving" / "mnist" / "2" / "assets.extra" / "push.json")
    winner = nights[[s["pushed"] for s in summaries].index(2)]
    assert pushed["run"] == winner.id
    assert read_json(winner.path / "evaluate" / "blessing.json")["judged_against"]["version"] == 1


def test_the_tasks_of_one_key_make_one_run_in_the_graphs_order_with_one_configuration(store, tfds_dir):
    from pipeline.config import load_config
    from pipeline.runner import MissingInputError, run

    cfg = load_config(small_overrides(tfds_dir))
    with pytest.raises(MissingInputError, match="evaluate runs after ingest, validate, train, which the run of manual__1 has not"):
        run(cfg, store, ["evaluate"], run_key="manual__1")  # its inputs exist in other runs, not in this one
    assert ArtifactStore(store).keyed("manual__1") is None  # nothing made
    statuses = []
    for step in STEPS:
        run_dir = run(cfg, store, [step], run_key="manual__2")
        statuses.append(ArtifactStore(store).run(run_dir.name).status)
    assert statuses == ["waiting"] * (len(STEPS) - 1) + ["succeeded"]
    night = ArtifactStore(store).keyed("manual__2")
    assert {n: c["status"] for n, c in night.record["components"].items()} == dict.fromkeys(STEPS, "cached")
    assert len([r for r in ArtifactStore(store).runs() if r.record.get("orchestrator_run") == "manual__2"]) == 1
    with pytest.raises(ValueError, match="another configuration"):
        run(load_config(small_overrides(tfds_dir, **{"train.epochs": 3})), store, ["train"], run_key="manual__2")


def test_hostile_settings_reach_the_dag_file_as_data_never_as_code(tmp_path):
    import ast

    hostile = "x'''\"\"\"\nimport os; os.system('touch pwned')  # \x1b[31m"
    dag_file = tmp_path / "mnist_pipeline.py"
    assert main(["--artifacts", str(tmp_path / "a'b"), "dag", "airflow", "-o", str(dag_file),
                 "--set", f"ingest.extra_dir={json.dumps(hostile)}"]) == 0
    tree = ast.parse(dag_file.read_text())
    assert [type(node).__name__ for node in tree.body] == ["Expr", "ImportFrom", "Assign"]  # docstring, import, dag
    settings = {k.arg: ast.literal_eval(k.value) for k in tree.body[2].value.keywords}
    assert settings["config"]["ingest"]["extra_dir"] == hostile and settings["artifacts"].endswith("a'b")
    for bad in (["--dag-id", "x; rm -rf /"], ["--schedule", "@daily\nimport os"]):
        assert main(["dag", "airflow", "-o", str(tmp_path / "other.py"), *bad]) == 1
    assert main(["dag", "kubeflow", "-o", str(tmp_path / "p.yaml"), "--image", "img; rm -rf /",
                 "--artifacts", "/mnt/a"]) == 1
    assert main(["run", "ingest", "--run-key", "a\nforged line"]) == 1
    assert not (tmp_path / "other.py").exists() and not (tmp_path / "p.yaml").exists()
