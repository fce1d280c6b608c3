"""Two writers at once on one artifacts root: real `python -m pipeline` processes, paused
with SIGSTOP at the moment that matters, over a slice of MNIST (loopback only, every wait bounded)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, small_overrides
from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.runner import run
from pipeline.store import read_json

DEADLINE_S = 240


def _start(root, tfds_dir, **settings) -> subprocess.Popen:
    args = [a for o in small_overrides(tfds_dir, **settings) for a in ("--set", o)]
    return subprocess.Popen([sys.executable, "-m", "pipeline", "--artifacts", str(root), "run", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, child: subprocess.Popen):
    deadline = time.monotonic() + DEADLINE_S
    while not (found := condition()):
        assert child.poll() is None, f"the run ended early: {child.stderr.read()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def _run_of(root, child: subprocess.Popen):
    """The run directory the child process made, once it exists."""
    for run_dir in (root / "runs").glob("*"):
        if read_json(run_dir / "run.json").get("pid") == child.pid:
            return run_dir
    return None


def _log_of(run_dir) -> str:
    """The run's log so far; the run writes run.json a moment before it opens run.log."""
    log = run_dir / "run.log"
    return log.read_text() if log.is_file() else ""


@pytest.fixture
def child_processes():
    started: list[subprocess.Popen] = []
    yield started
    for child in started:  # never leave a stopped process behind, whatever failed
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.kill()
            child.wait()


def test_a_stale_blessing_never_replaces_the_model_pushed_meanwhile(store, tfds_dir, child_processes):
    shutil.rmtree(store / "serving")  # nothing served: both runs are judged against no baseline
    # The reproduction: a poor model, blessed on min_accuracy alone, paused on its way to the push.
    slow = _start(store, tfds_dir, **{"train.learning_rate": 0.00002, "train.epochs": 1, "evaluate.min_accuracy": 0.05})
    child_processes.append(slow)
    slow_run = _wait_for(lambda: _run_of(store, slow), slow)
    _wait_for(lambda: "export started" in _log_of(slow_run), slow)
    os.kill(slow.pid, signal.SIGSTOP)

    fast_run = run(load_config(small_overrides(tfds_dir, seed=7, **{"train.epochs": 1})), store)
    fast_export = json.loads((fast_run / "export" / "export.json").read_text())
    assert fast_export["pushed"] and fast_export["version"] == 1

    os.kill(slow.pid, signal.SIGCONT)
    assert slow.wait(timeout=DEADLINE_S) == 0, slow.stderr.read()
    export = json.loads((slow_run / "export" / "export.json").read_text())
    blessing = json.loads((slow_run / "evaluate" / "blessing.json").read_text())
    assert blessing["blessed"] and blessing["judged_against"] is None
    assert export["pushed"] is False
    [reason] = export["not_pushed_because"]
    assert "judged against no served version, but version 1 is served now" in reason
    assert f"pushed by run {fast_run.name}" in reason
    assert sorted(p.name for p in (store / "serving" / "mnist").iterdir()) == ["1"]  # nothing pushed over it

    # The next run judges the paused run's model against version 1: evaluated again, not pushed.
    again = run(load_config(small_overrides(tfds_dir, **{"train.learning_rate": 0.00002, "train.epochs": 1,
                                                          "evaluate.min_accuracy": 0.05})), store)
    record = json.loads((again / "run.json").read_text())["components"]
    assert record["train"]["status"] == "cached" and record["evaluate"]["status"] == "succeeded"
    assert json.loads((again / "evaluate" / "blessing.json").read_text())["judged_against"]["version"] == 1


def test_retention_and_a_second_training_leave_a_live_run_alone(store, tfds_dir, child_processes, caplog):
    settings = {"train.epochs": 6, "train.stop": "none", "seed": 11}
    live = _start(store, tfds_dir, **settings)
    child_processes.append(live)
    live_run = _wait_for(lambda: _run_of(store, live), live)
    committed = _wait_for(lambda: next(iter((store / "backups").glob("*/epoch/training_metadata.json")), None), live)
    os.kill(live.pid, signal.SIGSTOP)  # alive, mid-training: its scratch, backup and inputs in use
    scratch = [p.name for p in live_run.iterdir() if p.name.startswith(".")]
    assert any(name.startswith(".train-") for name in scratch) and any(name.startswith(".tmp-") for name in scratch)
    epoch = json.loads(committed.read_text())["epoch"]

    # A second training of the same model (same fingerprint) does not share the live one's backup.
    second = run(load_config(small_overrides(tfds_dir, **settings)), store, ["train"])
    assert "another live run is training the same model" in caplog.text
    assert json.loads(committed.read_text())["epoch"] == epoch  # the live backup untouched
    assert json.loads((second / "train" / "training.json").read_text())["resumed_after_epoch"] == 0

    # gc keeping one run: the newest is `second`, yet the live run, its scratch, the run whose
    # preprocess output it reads, and its backup (held, though a training of it has finished) stay.
    assert main(["--artifacts", str(store), "gc", "--set", "retention.keep_runs=1"]) == 0
    assert sorted(p.name for p in live_run.iterdir() if p.name.startswith(".")) == sorted(scratch)
    inputs = json.loads((live_run / "run.json").read_text())["components"]["train"]["inputs"]
    assert os.path.isdir(inputs["transformed"])
    assert committed.is_file()

    os.kill(live.pid, signal.SIGCONT)
    assert live.wait(timeout=DEADLINE_S) == 0, live.stderr.read()
    assert json.loads((live_run / "run.json").read_text())["status"] == "succeeded"
    assert json.loads((live_run / "train" / "training.json").read_text())["epochs_run"] == 6
