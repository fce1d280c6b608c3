"""The nightly as cron runs it: a real process, killed or doubled up, over a slice of MNIST."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image

from conftest import REPO, small_overrides
from pipeline.config import load_config
from pipeline.nightly import EX_TEMPFAIL, LOCK, SUMMARY, nightly


def _start(root, tfds_dir, **settings):
    args = [a for o in small_overrides(tfds_dir, **settings) for a in ("--set", o)]
    # A temp dir of the test's own, to see what a killed process leaves behind there.
    temp = root.parent / "child-temp"
    temp.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "pipeline", "--artifacts", str(root), "nightly", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(temp)})


def _wait_for(condition, seconds=180):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _locked(root) -> bool:
    try:
        FileLock(root / LOCK).acquire(timeout=0).lock.release()
        return False
    except Timeout:
        return True


def _temp_entries() -> set[str]:
    # pytest keeps its own tmp_path folders under pytest-of-<user>; everything else is ours to answer for.
    return {p.name for p in Path(tempfile.gettempdir()).iterdir() if not p.name.startswith("pytest-of-")}


def test_a_second_nightly_exits_75_at_once_while_the_first_runs(tmp_path, tfds_dir):
    root = tmp_path / "artifacts"
    temp_before = _temp_entries()
    first = _start(root, tfds_dir)
    _wait_for(lambda: (root / LOCK).exists() and _locked(root))
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "pipeline", "--artifacts", str(root), "nightly"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == EX_TEMPFAIL and time.monotonic() - started < 15
    assert "another nightly is running" in second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    summary_line = out.strip().splitlines()[-1]
    assert summary_line.startswith("nightly succeeded: run ") and "pushed version 1" in summary_line
    [run_dir] = (root / "runs").iterdir()
    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["pushed"] == 1 and summary["data"] == {"train": 2000, "extra_images": 0, "test": 500}
    assert " INFO pipeline: ingest started" in out  # the night's log goes to stdout, one timestamped line per event
    run_log = (run_dir / "run.log").read_text()
    assert "ingest started" in run_log and run_log.rstrip().endswith(summary_line)
    assert _temp_entries() - temp_before == set()  # a whole night leaves nothing in the system temp dir


def test_a_stale_lock_of_a_dead_process_does_not_block(store, tfds_dir):
    holder = subprocess.Popen([sys.executable, "-c", f"from filelock import FileLock; lock = FileLock({str(store / LOCK)!r}); lock.acquire(); "
                               "import time; time.sleep(600)"])
    _wait_for(lambda: _locked(store))
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (store / LOCK).exists()  # left behind, but the OS released the lock with the process
    status, summary = nightly(load_config(small_overrides(tfds_dir)), store)
    assert status == 0 and set(summary["components"].values()) == {"cached"}  # nothing new: seconds
    assert summary["push_decision"].startswith("not pushed: nothing changed since run")


def test_a_nightly_killed_in_training_resumes_there_and_completes(store, tfds_dir):
    settings = {"train.epochs": 8, "train.stop": "none"}
    killed = _start(store, tfds_dir, **settings)
    metadata = lambda: list((store / "backups").glob("*/epoch/training_metadata.json"))  # noqa: E731
    _wait_for(lambda: metadata() or killed.poll() is not None)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not list((store.parent / "child-temp").iterdir())  # killed mid-training, it left no temp file
    done = json.loads(metadata()[0].read_text())["epoch"]
    assert 1 <= done < 8

    status, summary = nightly(load_config(small_overrides(tfds_dir, **settings)), store)
    assert status == 0
    assert summary["resumed"]["training_resumed_after_epoch"] == done
    assert summary["components"]["ingest"] == summary["components"]["preprocess"] == "cached"
    run_dir = store / "runs" / summary["run_id"]
    training = json.loads((run_dir / "train" / "training.json").read_text())
    assert training["epochs_run"] == 8 and training["resumed_after_epoch"] == done
    assert not list((store / "backups").glob("*/*"))  # the finished training's backup is gone
    crashed = store / "runs" / summary["resumed"]["from_run"]
    assert not (crashed / "train").exists() and (store / "serving" / "mnist" / "1").is_dir()  # nothing half-made


def test_bad_extra_files_are_listed_and_the_night_still_succeeds(store, tfds_dir, tmp_path):
    extra = tmp_path / "extra"
    (extra / "4").mkdir(parents=True)
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 13:16] = 255
    Image.fromarray(255 - digit).resize((56, 56)).save(extra / "4" / "a.png")
    (extra / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (extra / "readme.txt").write_text("corrections of 2026-11-21")
    status, summary = nightly(load_config(small_overrides(tfds_dir, **{"ingest.extra_dir": extra,
                                                                       "retention.keep_runs": 1})), store)
    assert status == 0 and summary["data"]["extra_images"] == 1 and summary["data"]["train"] == 2001
    assert sorted(s["path"].rsplit("/", 1)[-1] for s in summary["skipped_files"]) == ["broken.png", "readme.txt"]
    # Retention kept only the newest run, and every run whose artifacts it reuses.
    record = json.loads((store / "runs" / summary["run_id"] / "run.json").read_text())
    for component in record["components"].values():
        assert "reused" not in component or (store / "runs").joinpath(*component["reused"].split("/runs/")[1:]).is_dir()


def test_a_nightly_stopped_by_sigterm_records_where_and_alerts_and_the_next_night_says_so(store, tfds_dir, webhook):
    url, received = webhook
    settings = {"train.epochs": 8, "train.stop": "none", "notify.webhook": url}
    stopped = _start(store, tfds_dir, **settings)
    _wait_for(lambda: list((store / "backups").glob("*/epoch/training_metadata.json")) or stopped.poll() is not None)
    stopped.send_signal(signal.SIGTERM)  # what systemctl stop and most schedulers send
    out, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 128 + signal.SIGTERM, err
    run_dir = max((store / "runs").iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "terminated" and record["stopped_in"] == "train"
    assert record["components"]["train"]["status"] == "terminated"
    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["status"] == "terminated" and "stopped by SIGTERM" in summary["error"]
    _, _, alert = received.get(timeout=30)
    assert alert["event"] == "failure" and alert["run_id"] == run_dir.name
    assert alert["text"].splitlines()[0] == [line for line in out.splitlines() if line.startswith("nightly ")][-1]
    assert "not pushed: the run was stopped (train stopped: stopped by SIGTERM)" in alert["text"]

    status, summary = nightly(load_config(small_overrides(tfds_dir, **settings)), store)
    assert status == 0
    assert summary["interrupted"] == {"run": run_dir.name, "status": "terminated", "step": "train"}
    _, _, alert = received.get(timeout=30)  # told although notify.on is `failure`: nobody heard of the last one
    assert f"the last night's run {run_dir.name} was terminated during train, resumed" in alert["text"]
