import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, small_overrides
from pipeline.config import load_config
from pipeline.graph import STEPS
from pipeline.runner import MissingInputError, run
from pipeline.store import ArtifactStore


def test_full_run_leaves_five_whole_artifacts_with_lineage(full_run):
    root, run_dir, _ = full_run
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded"
    assert list(record["components"]) == list(STEPS)
    assert all(c["status"] == "succeeded" and c["duration_s"] >= 0 for c in record["components"].values())
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no scratch left behind
    for name, step in STEPS.items():
        manifest = json.loads((run_dir / name / "manifest.json").read_text())
        assert manifest["component"] == name and manifest["status"] == "succeeded"
        assert manifest["run_id"] == run_dir.name
        assert manifest["versions"]["tensorflow"]
        assert len(manifest["fingerprint"]) == 64
        assert set(manifest["inputs"]) == set(step.inputs)
        for arg, upstream in step.inputs.items():  # lineage: each input is this run's upstream output
            assert manifest["inputs"][arg] == str(run_dir / upstream)
    ingest_manifest = json.loads((run_dir / "ingest" / "manifest.json").read_text())
    assert ingest_manifest["parameters"]["train_split"] == "train[:2000]"
    assert ingest_manifest["result"]["splits"]["train"]["count"] == 2000
    assert "ingest started" in (run_dir / "run.log").read_text()


def test_one_component_alone_uses_the_latest_upstream(full_run, tmp_path, tfds_dir):
    root = tmp_path / "artifacts"
    shutil.copytree(full_run[0], root)
    cfg = load_config(small_overrides(tfds_dir, **{"train.epochs": 1}))
    run_dir = run(cfg, root, ["train"])
    assert run_dir.name != full_run[1].name
    assert sorted(p.name for p in run_dir.iterdir()) == ["report", "report.html", "run.json", "run.log", "train"]
    manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
    assert manifest["inputs"]["transformed"] == str(root / "runs" / full_run[1].name / "preprocess")
    assert manifest["result"]["epochs_run"] == 1
    assert ArtifactStore(root).latest("train").run_id == run_dir.name

    # evaluate alone now takes the newest train output and the old ingest output
    eval_dir = run(cfg, root, ["evaluate"])
    manifest = json.loads((eval_dir / "evaluate" / "manifest.json").read_text())
    assert manifest["inputs"]["model"] == str(run_dir / "train")
    assert manifest["parameters"]["baseline"] == str(root / "serving" / "mnist" / "1")


def test_component_before_its_inputs_exist_names_them(tmp_path, tfds_dir):
    cfg = load_config(small_overrides(tfds_dir))
    with pytest.raises(MissingInputError) as err:
        run(cfg, tmp_path, ["evaluate"])
    message = str(err.value)
    assert "evaluate needs the output of ingest, preprocess, train" in message
    assert "python -m pipeline run ingest && python -m pipeline run preprocess && python -m pipeline run train" in message
    assert not (tmp_path / "runs").exists()


def test_a_failing_component_leaves_no_artifact(full_run, tmp_path, tfds_dir):
    root = tmp_path / "artifacts"
    shutil.copytree(full_run[0], root)
    cfg = load_config(small_overrides(tfds_dir, **{"train.monitor": "nope"}))
    with pytest.raises(ValueError, match="nope"):
        run(cfg, root, ["train"])
    [failed] = [d for d in (root / "runs").iterdir() if d.name != full_run[1].name]
    assert sorted(p.name for p in failed.iterdir()) == ["report", "report.html", "run.json", "run.log"]
    record = json.loads((failed / "run.json").read_text())
    assert record["status"] == "failed" and record["components"]["train"]["status"] == "failed"
    assert ArtifactStore(root).latest("train").run_id == full_run[1].name  # the whole one is still latest


def test_a_run_killed_mid_step_leaves_its_temp_files_in_the_run_not_the_system_temp_dir(full_run, tmp_path, tfds_dir):
    root, temp = tmp_path / "artifacts", tmp_path / "system-temp"
    shutil.copytree(full_run[0], root)
    temp.mkdir()
    args = [a for o in small_overrides(tfds_dir) for a in ("--set", o)]
    child = subprocess.Popen([sys.executable, "-m", "pipeline", "--artifacts", str(root), "run", "preprocess", *args],
                             cwd=REPO, stderr=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(temp)})
    beam_temp = lambda: list((root / "runs").glob("*/.tmp-*/beam-pipeline-temp*"))  # noqa: E731  made as the job starts
    deadline = time.monotonic() + 120
    while not beam_temp() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert beam_temp() and not list(temp.iterdir())


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs: the issue's reproduction of a full disk (mounting needs root, as CI has)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_is_recorded_naming_the_component_and_leaves_nothing_half_written(full_run, small_disk, tfds_dir):
    root = small_disk / "artifacts"
    shutil.copytree(full_run[0], root)
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * (free - 2_000_000))  # room for a little, not for an epoch's backup
    cfg = load_config(small_overrides(tfds_dir, **{"train.epochs": 1}))
    with pytest.raises(OSError) as err:
        run(cfg, root, ["train"])
    [failed] = [d for d in (root / "runs").iterdir() if d.name != full_run[1].name]
    record = json.loads((failed / "run.json").read_text())  # recorded, though the disk was full
    assert record["status"] == "failed" and record["components"]["train"]["status"] == "failed"
    assert record["error"].startswith("train failed: ") and "No space left on device" in record["error"]
    assert "\n" not in record["error"]
    assert "train failed after" in (failed / "run.log").read_text()
    assert getattr(err.value, "component", None) == "train"
    # No temp file of any writer, no partial backup, no scratch: only what a failed run keeps.
    leftovers = [p for p in root.rglob(".*") if not p.name.endswith(".push.lock")]  # the lock stays: it is no data
    assert not leftovers, leftovers
    assert not list((root / "backups").glob("*/epoch")) and not list((root / "backups").glob("*/.saving"))

    filler.unlink()
    run_dir = run(cfg, root, ["train"])
    training = json.loads((run_dir / "train" / "training.json").read_text())
    assert training["resumed_after_epoch"] == 0 and training["epochs_run"] == 1


def test_runs_started_within_one_second_keep_their_order(tmp_path):
    import time

    from pipeline.store import ArtifactStore

    store = ArtifactStore(tmp_path)
    made = []
    for _ in range(5):  # a fully cached run takes half a second: several fit in one
        made.append(store.new_run({"status": "succeeded"}).name)
        time.sleep(0.002)
    assert [run.id for run in store.runs()] == made
