"""Shared fixtures: real MNIST from the offline mirror, sliced small so the suite stays fast."""
from __future__ import annotations

import contextlib
import getpass
import json
import os
import queue
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("MNIST_MIRROR", REPO.parent / "shared" / "data" / "mnist"))
TRAIN_SLICE, TEST_SLICE = "train[:2000]", "test[:500]"


@pytest.hookimpl(trylast=True)  # after pytest's own, which deletes a passing session's folders
def pytest_sessionfinish(session, exitstatus):
    # pytest leaves their parent, pytest-of-<user>, behind in the system temp even when empty.
    if session.config.option.basetemp is None:
        parent = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
        with contextlib.suppress(OSError):  # not empty: a failing session's folders, kept to look at
            parent.rmdir()


def small_overrides(tfds_dir: Path, **extra) -> list[str]:
    """`--set` overrides for a quick, offline run on a slice of MNIST."""
    settings = {
        "ingest.manual_dir": str(MIRROR),
        "ingest.data_dir": str(tfds_dir),
        "ingest.train_split": TRAIN_SLICE,
        "ingest.test_split": TEST_SLICE,
        "train.preset": "seed-000",
        "train.epochs": 2,
        "evaluate.min_accuracy": 0.5,
        "export.verify_examples": 64,
        **extra,
    }
    return [f"{k}={v}" for k, v in settings.items()]


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"MNIST mirror not found at {MIRROR}; set MNIST_MIRROR to the folder of the original files")
    return MIRROR


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory, mirror) -> Path:
    """A TFDS data dir with MNIST prepared once from the mirror, shared by every test."""
    from components.ingest import prepared_builder

    path = tmp_path_factory.mktemp("tfds")
    prepared_builder("mnist", path, mirror, scratch=tmp_path_factory.mktemp("scratch"))
    return path


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, tfds_dir):
    """One whole pipeline run on a slice: (artifacts root, run directory, config)."""
    from pipeline.config import load_config
    from pipeline.runner import run

    root = tmp_path_factory.mktemp("artifacts")
    cfg = load_config(small_overrides(tfds_dir))
    return root, run(cfg, root), cfg


@pytest.fixture
def store(full_run, tmp_path):
    """A copy of the session's artifacts root: one whole run, version 1 served."""
    import shutil

    root = tmp_path / "artifacts"
    shutil.copytree(full_run[0], root)
    return root


@pytest.fixture
def webhook():
    """A loopback HTTP server; yields (url, queue of (path, JSON body))."""
    received: queue.Queue = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.put((self.path, self.headers["Content-Type"], json.loads(body)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/secret", received
    server.shutdown()
    server.server_close()
