"""`runs` and `show` read lineage back from the store, without TensorFlow."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, small_overrides
from pipeline import lineage
from pipeline.store import ArtifactStore


def pipeline(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_show_a_served_version_walks_back_to_the_tfds_splits(full_run):
    root, run_dir, _ = full_run
    result = pipeline("--artifacts", root, "show", "v1", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["push"]["run"] == run_dir.name
    assert [(s["component"], s["run"]) for s in shown["lineage"]] == [
        ("train", run_dir.name), ("preprocess", run_dir.name), ("ingest", run_dir.name)]
    assert shown["lineage"][-1]["results"] == {"train": {"tfds_split": "train[:2000]", "count": 2000},
                                               "test": {"tfds_split": "test[:500]", "count": 500}}
    text = pipeline("--artifacts", root, "show", "v1").stdout
    assert f"<- ingest     run {run_dir.name}" in text and "train[:2000]" in text


def test_runs_and_show_describe_a_run(full_run):
    root, run_dir, _ = full_run
    [row] = [r for r in json.loads(pipeline("--artifacts", root, "runs", "--json").stdout) if r["run"] == run_dir.name]
    assert (row["status"], row["preset"], row["train"], row["test"], row["pushed"]) == ("succeeded", "seed-000", 2000, 500, 1)
    assert 0.5 < row["test_accuracy"] <= 1
    shown = json.loads(pipeline("--artifacts", root, "show", run_dir.name, "--json").stdout)
    train = shown["components"]["train"]
    assert train["status"] == "succeeded" and train["inputs"]["transformed"]["run"] == run_dir.name
    assert train["parameters"]["preset"] == "seed-000" and len(train["fingerprint"]) == 12
    assert train["results"]["epochs_run"] == 2


def test_a_run_whose_process_died_is_crashed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    store = ArtifactStore(tmp_path)
    store.new_run({"pid": dead.pid, "process_started": 0.0, "status": "running"})
    alive = store.new_run({"status": "running", "pid": __import__("os").getpid(),
                           "process_started": __import__("psutil").Process().create_time()})
    statuses = {r["run"]: r["status"] for r in lineage.runs(tmp_path)}
    assert statuses[alive.name] == "running"
    assert sorted(statuses.values()) == ["crashed", "running"]


def test_runs_and_show_never_import_tensorflow(full_run):
    probe = (
        "import sys; from pipeline.__main__ import main; "
        f"codes = [main(['--artifacts', {str(full_run[0])!r}, *c]) for c in (['runs'], ['show', 'v1'], "
        f"['show', {full_run[1].name!r}])]; "
        "print(codes, sorted(m for m in ('tensorflow', 'keras', 'apache_beam', 'tensorflow_datasets') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[0, 0, 0] []", result.stdout + result.stderr


def test_reused_outputs_are_found_from_any_working_directory(full_run, tmp_path, tfds_dir, monkeypatch):
    import shutil

    from pipeline.config import load_config
    from pipeline.lineage import artifact
    from pipeline.runner import run
    from pipeline.store import ArtifactStore

    shutil.copytree(full_run[0], tmp_path / "artifacts")
    monkeypatch.chdir(tmp_path)
    cached = run(load_config(small_overrides(tfds_dir)), Path("artifacts"))  # a relative root, as `--artifacts` takes
    monkeypatch.chdir(REPO)
    found = artifact(ArtifactStore(tmp_path / "artifacts").run(cached.name), "train")
    assert found == tmp_path / "artifacts" / "runs" / full_run[1].name / "train"


def test_every_page_credits_a_push_to_the_run_whose_push_record_names_it(store, full_run, tfds_dir):
    from pipeline.config import load_config
    from pipeline.nightly import nightly
    from pipeline.report import build_index

    first = full_run[1].name
    status, summary = nightly(load_config(small_overrides(tfds_dir)), store)  # nothing new: all cached
    assert status == 0 and summary["pushed"] is None
    cached = summary["run_id"]
    # The served model's own figures, from its push record, not the blessing it was once judged by.
    served = json.loads((store / "serving" / "mnist" / "1" / "assets.extra" / "push.json").read_text())
    assert summary["served"] == {"version": 1, "accuracy": served["test_accuracy"]}
    assert f"serving v1 ({served['test_accuracy']:.2%})" in (store / "runs" / cached / "run.log").read_text()

    # A run killed right after its push rename has no export of its own, but the push record names it.
    shutil.rmtree(store / "runs" / first / "export")
    rows = {r["run"]: r["pushed"] for r in json.loads(pipeline("--artifacts", store, "runs", "--json").stdout)}
    assert rows == {first: 1, cached: None}
    text = pipeline("--artifacts", store, "runs").stdout
    [cached_line] = [line for line in text.splitlines() if line.startswith(cached)]
    assert cached_line.rstrip().endswith("-")
    index = build_index(store, store / "serving" / "mnist").read_text()
    assert index.count(">v1<") == 1  # the runs table credits v1 to the first run only


def test_a_run_stopped_by_its_validation_shows_validate_as_failed(tmp_path, tfds_dir):
    from pipeline.config import load_config
    from pipeline.nightly import nightly
    from pipeline.report import build_report

    status, summary = nightly(load_config(small_overrides(tfds_dir, **{"validation.min_examples": 10**6})), tmp_path)
    assert status == 1 and summary["components"]["validate"] == "failed" and summary["failed_step"] == "validate"
    assert summary["failed_checks"] and summary["failed_checks"][0].startswith("empty_split")
    run_dir = tmp_path / "runs" / summary["run_id"]
    record = json.loads((run_dir / "run.json").read_text())["components"]["validate"]
    assert record["status"] == "failed" and record["gate"] == "failed" and "data validation failed" in record["error"]
    html = build_report(run_dir).read_text()
    assert '<td class="text">validate</td><td class="text">failed</td>' in html
    assert json.loads((run_dir / "validate" / "manifest.json").read_text())["status"] == "succeeded"  # whole, reusable
