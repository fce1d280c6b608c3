"""Preprocess on other Beam runners and modes: the same examples and statistics as the default runner."""
from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slice_examples(tmp_path_factory, tfds_dir, mirror):
    from components.ingest import ingest

    examples = tmp_path_factory.mktemp("portable") / "examples"
    ingest(examples, train_split="train[:1000]", test_split="test[:200]", manual_dir=mirror, data_dir=tfds_dir)
    return examples


@pytest.fixture(scope="module")
def by_default_runner(slice_examples):
    from components.preprocess import preprocess

    out = slice_examples.parent / "default"
    return out, preprocess(slice_examples, out)


def _records(folder) -> dict[str, collections.Counter]:
    import tensorflow as tf

    # Parsed, not raw bytes: protobuf writes a feature map in an order that varies by process.
    def content(record):
        features = tf.train.Example.FromString(record).features.feature
        return np.asarray(features["image"].float_list.value, np.float32).tobytes(), features["label"].int64_list.value[0]

    return {split: collections.Counter(content(r.numpy()) for r in tf.data.TFRecordDataset(
        sorted(map(str, folder.glob(f"{split}-*.tfrecord"))))) for split in ("train", "validation")}


def _same_output(out, statistics, default):
    default_dir, default_statistics = default
    assert statistics.keys() == default_statistics.keys()
    for split, stats in statistics.items():
        expected = default_statistics[split]
        assert stats["count"] == expected["count"] and stats["class_histogram"] == expected["class_histogram"]
        assert stats["invalid"] == expected["invalid"]
        # Sums merged in another order: equal to float precision, not bit for bit.
        for key in ("pixel_mean", "pixel_std", "pixel_min", "pixel_max"):
            assert stats[key] == pytest.approx(expected[key], rel=1e-9)
        assert stats["pixel_histogram"] == pytest.approx(expected["pixel_histogram"], rel=1e-12)
    assert _records(out) == _records(default_dir)


def test_multi_processing_with_two_workers_matches_the_default_runner(slice_examples, by_default_runner, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # the job must not depend on the launcher's working directory
    from components.preprocess import preprocess

    out = tmp_path / "multi"
    statistics = preprocess(slice_examples, out, pipeline_options=[
        "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    _same_output(out, statistics, by_default_runner)


def _start_service(module: str, args: list[str], log, env: dict) -> subprocess.Popen:
    # Its own process group: the worker pool's workers are its children, and go with it.
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(found, process: subprocess.Popen, log_path, what: str) -> str:
    for _ in range(600):  # both import Beam (and so TensorFlow's protobufs) first: seconds on a busy machine
        if value := found():
            return value
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"{what} did not start:\n{log_path.read_text()[-2000:]}")


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _beam_temp_entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith(("beam", "tmp"))}


def test_portable_runner_with_an_external_worker_pool_matches_the_default_runner(
        slice_examples, by_default_runner, tmp_path, monkeypatch):
    """The way a Flink or Spark cluster runs Python: a job service hands the pipeline to
    workers in other processes, which import `components` themselves."""
    from components.preprocess import preprocess

    system_temp = Path(tempfile.gettempdir())
    before = _beam_temp_entries(system_temp)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # the launcher's staging files
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(temp),
           # The pool starts each worker as a bare `python`: it must be this environment's.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    job_port_file, job_log, pool_log = tmp_path / "job.port", tmp_path / "job.log", tmp_path / "pool.log"
    with job_log.open("w") as job_out, pool_log.open("w") as pool_out:
        job_service = _start_service("apache_beam.runners.portability.local_job_service_main",
                                     ["--port=0", f"--port_file={job_port_file}", f"--staging_dir={tmp_path / 'staging'}"],
                                     job_out, env)
        pool = None
        try:
            pool = _start_service("apache_beam.runners.worker.worker_pool_main", ["--service_port=0"], pool_out, env)
            job_port = _wait_for(lambda: job_port_file.is_file() and job_port_file.read_text(), job_service, job_log,
                                 "the job service")
            pool_port = _wait_for(lambda: (m := re.search(r"servicer at port: \S+:(\d+)", pool_log.read_text())) and m[1],
                                  pool, pool_log, "the worker pool")
            out = tmp_path / "portable"
            statistics = preprocess(slice_examples, out, runner="PortableRunner", pipeline_options=[
                f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{pool_port}"])
        finally:
            for service in (job_service, pool):
                if service is not None:
                    _stop(service)
    assert "Starting worker with command" in pool_log.read_text()  # the pool's workers ran the job
    _same_output(out, statistics, by_default_runner)
    assert _beam_temp_entries(system_temp) <= before


def test_the_scale_benchmarks_numpy_loop_writes_what_beam_writes(slice_examples, by_default_runner, tmp_path):
    from benchmarks.scale import preprocess_in_numpy

    out = tmp_path / "numpy"
    statistics = preprocess_in_numpy(slice_examples, out)
    default_dir, default_statistics = by_default_runner
    for split, stats in statistics.items():
        assert stats["count"] == default_statistics[split]["count"]
        assert stats["pixel_mean"] == pytest.approx(default_statistics[split]["pixel_mean"], rel=1e-9)
    assert _records(out) == _records(default_dir)


def test_the_scale_benchmarks_copies_are_shifted_and_distinct():
    from benchmarks.scale import shifted_copies

    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    copies = list(shifted_copies(images, 4.5))
    assert [len(c) for c in copies] == [50, 50, 50, 50, 25]
    np.testing.assert_array_equal(copies[0], images)
    flat = np.concatenate(copies).reshape(len(copies) * 50 - 25, -1)
    assert len(np.unique(flat, axis=0)) == len(flat)
