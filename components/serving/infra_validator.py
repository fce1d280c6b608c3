"""Infra validation: the SavedModel about to be pushed, loaded and called by a clean process.

TF Serving cannot be installed here, so the stand-in is the closest honest one: a fresh
Python started with `-S -I` (no `site`, so no editable-install finder and no .pth files; no
PYTHON* variables, no user site, not the current folder), whose path is the standard library
and this interpreter's site-packages and nothing else. It first proves that no project
module (`components`, `pipeline`) can be imported, then, as a model server would:

1. loads the SavedModel under a time limit (`load_timeout_s`; the process is killed and
   started again, up to `tries` times in all): the `serve` tag, the `serving_default`
   signature exactly as `SIGNATURE` says (names, dtypes, shapes), the load itself, and the
   replay of TF Serving's warm-up requests (`assets.extra/tf_serving_warmup_requests`),
   which TF Serving also runs before it calls a model available;
2. answers canary requests, test images at each of `batch_sizes`; their probabilities and
   classes must match the training process's predictions (`tolerance`, and the same argmax);
3. answers `latency_requests` batch-1 requests, timed one by one: p50 and p99.

A timeout or a process that dies without a verdict is retried; a verdict (a wrong
signature, a load error, a wrong answer) is final. The child talks through JSON lines on
its stdout and `.npy` files in `scratch`, which also holds its temp dir: it leaves nothing
in the system's.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
SIGNATURE = {  # serving_default as clients (and TF Serving's REST API) call it; -1: any size
    "inputs": {"images": ["DT_UINT8", [-1, 28, 28]]},
    "outputs": {"probabilities": ["DT_FLOAT", [-1, 10]], "classes": ["DT_INT64", [-1]]},
}
TAG, SIGNATURE_KEY = "serve", "serving_default"
IMPORT_TIMEOUT_S = 300.0  # importing TensorFlow on a busy machine: not the model's fault, but not forever
REQUEST_TIMEOUT_S = 300.0  # the canaries and the latency requests together
MARK = "@infra "  # our lines on the child's stdout; anything else there is a library's
ATTEMPT_FIELDS = ("outcome", "stage", "reason", "seconds", "load_seconds")  # per try, in the record
REFUSED = "infra validation failed"  # how export.json's not_pushed_because names this check

CHILD = r'''
import importlib.util, json, sys, time, traceback
sys.path.append(sys.argv[1])  # site-packages, and only that: python -S -I left stdlib alone on the path
config = json.load(open(sys.argv[2]))
def say(event, **fields):
    print("@infra " + json.dumps({"event": event, **fields}), flush=True)
def refuse(stage, reason):
    say("refused", stage=stage, reason=reason)
    sys.exit(3)
def first_line(err):
    lines = [l.strip() for l in str(getattr(err, "message", None) or err).splitlines() if l.strip()]
    if lines and lines[0] == "Graph execution error:":  # TensorFlow's cause is further down
        node = [l.split()[3] for l in lines if l.startswith("Detected at node ")]
        cause = [l for l in lines[1:] if l.split(":")[0].endswith(("Error", "Exception"))]
        lines = ["graph execution error" + (" at node " + node[0] if node else "") + (": " + cause[0] if cause else "")]
    return (lines or [type(err).__name__])[0][:300]
for name in ("components", "pipeline"):
    spec = importlib.util.find_spec(name)
    if spec is not None:
        refuse("clean", "the clean process can import the project module %s (%s); "
               "validate from a checkout that is not installed into site-packages" % (name, spec.origin))
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
say("imported", tensorflow=tf.__version__, sys_path=sys.path,
    project_modules=[m for m in sys.modules if m.split(".")[0] in ("components", "pipeline")])

path = config["saved_model"]
started = time.perf_counter()
try:
    proto = saved_model_pb2.SavedModel.FromString(open(path + "/saved_model.pb", "rb").read())
except Exception as err:
    refuse("load", "saved_model.pb cannot be read: " + first_line(err))
graphs = [g for g in proto.meta_graphs if set(g.meta_info_def.tags) == {config["tag"]}]
if not graphs:
    refuse("signature", "no meta graph tagged exactly %r (tags: %s)" % (
        config["tag"], [list(g.meta_info_def.tags) for g in proto.meta_graphs]))
signatures = graphs[0].signature_def
if config["signature"] not in signatures:
    refuse("signature", "no %s signature (signatures: %s)" % (config["signature"], sorted(signatures)))
found = signatures[config["signature"]]
for side in ("inputs", "outputs"):
    want, have = config["expected"][side], getattr(found, side)
    if set(have) != set(want):
        refuse("signature", "%s %s are %s, expected %s" % (config["signature"], side, sorted(have), sorted(want)))
    for key, (dtype, shape) in want.items():
        info = have[key]
        got_dtype = types_pb2.DataType.Name(info.dtype)
        got_shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
        if got_dtype != dtype or got_shape != shape:
            refuse("signature", "%s %s %r is %s %s, expected %s %s" % (
                config["signature"], side[:-1], key, got_dtype, got_shape, dtype, shape))
try:
    loaded = tf.saved_model.load(path, tags=[config["tag"]])
    serve = loaded.signatures[config["signature"]]
except Exception as err:
    refuse("load", "tf.saved_model.load failed: " + first_line(err))
warmups = 0
if config["warmup"]:
    try:
        from tensorflow_serving.apis import prediction_log_pb2
        for record in tf.data.TFRecordDataset(config["warmup"]):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            request = entry.predict_log.request
            serve_warm = loaded.signatures[request.model_spec.signature_name or config["signature"]]
            serve_warm(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
            warmups += 1
    except Exception as err:
        refuse("warmup", "warm-up request %d failed: %s" % (warmups + 1, first_line(err)))
say("loaded", load_seconds=time.perf_counter() - started, warmup_requests=warmups)

images = np.load(config["images"])
try:
    for batch in config["batch_sizes"]:
        out = serve(images=tf.constant(images[:batch]))
        for key, value in out.items():
            np.save("%s/canary-%d-%s.npy" % (config["scratch"], batch, key), value.numpy())
    times = []
    for i in range(config["latency_requests"] + 1):  # the first one untimed
        one = tf.constant(images[i % len(images)][None])
        t = time.perf_counter()
        serve(images=one)["probabilities"].numpy()
        times.append((time.perf_counter() - t) * 1000)
except Exception as err:
    refuse("request", "a request to %s failed: %s" % (config["signature"], first_line(err)))
times = np.array(times[1:])
say("answered", p50=float(np.percentile(times, 50)), p99=float(np.percentile(times, 99)), requests=len(times))
'''


def site_packages() -> str:
    """The one folder of the interpreter's installed packages the clean process may see."""
    return sysconfig.get_paths()["purelib"]


def write_warmup(saved_model: Path, images: np.ndarray, model_name: str) -> Path:
    """TF Serving's warm-up file: a TFRecord of PredictionLog protos, each a PredictRequest
    of one of `images` to `serving_default`, replayed by TF Serving (and by `validate`)
    before the model takes traffic."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = Path(saved_model) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image in images:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SIGNATURE_KEY))
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.asarray(image, np.uint8)[None]))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def validate(saved_model: Path, images: np.ndarray, expected_probabilities: np.ndarray, *,
             load_timeout_s: float = 60.0, tries: int = 3, batch_sizes=(1, 64), latency_requests: int = 100,
             tolerance: float = 1e-5, scratch: Path | None = None, python: str = sys.executable) -> dict:
    """Validate `saved_model` in a clean process; return the record (infra_validation.json).

    `expected_probabilities` are the training process's answers for `images`. `scratch`
    (default: a folder beside the SavedModel) is removed afterwards.
    """
    saved_model = Path(saved_model).resolve()
    images = np.asarray(images, np.uint8)
    expected = np.asarray(expected_probabilities)
    batch_sizes = sorted({min(int(b), len(images)) for b in batch_sizes})
    scratch = Path(scratch or saved_model.parent / ".infra-validation").resolve()
    warmup = saved_model / WARMUP_FILE
    record = {
        "saved_model": str(saved_model), "passed": False, "reason": None, "load_seconds": None,
        "latency_ms": None, "tries": 0, "attempts": [],
        "settings": {"load_timeout_s": load_timeout_s, "tries": tries, "batch_sizes": batch_sizes,
                     "latency_requests": latency_requests, "tolerance": tolerance},
        "process": {"python": python, "flags": ["-S", "-I"], "site_packages": site_packages()},
        "tag": TAG, "signature": {SIGNATURE_KEY: SIGNATURE},
        "warmup_file": str(WARMUP_FILE) if warmup.is_file() else None,
    }
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        for attempt in range(1, tries + 1):
            (scratch / "tmp").mkdir(parents=True)
            np.save(scratch / "images.npy", images)
            config = {"saved_model": str(saved_model), "tag": TAG, "signature": SIGNATURE_KEY, "expected": SIGNATURE,
                      "warmup": str(warmup) if warmup.is_file() else None, "images": str(scratch / "images.npy"),
                      "batch_sizes": batch_sizes, "latency_requests": latency_requests, "scratch": str(scratch)}
            (scratch / "config.json").write_text(json.dumps(config))
            outcome = _one_try(python, scratch, load_timeout_s)
            record["attempts"].append({"try": attempt, **{k: round(v, 3) if isinstance(v, float) else v
                                                          for k, v in outcome.items() if k in ATTEMPT_FIELDS}})
            record["tries"] = attempt
            if outcome["outcome"] in ("timeout", "crashed") and attempt < tries:
                shutil.rmtree(scratch)
                continue
            if outcome["outcome"] != "answered":
                record["reason"] = outcome["reason"] + (f" (after {attempt} tries)" if attempt > 1 else "")
                return record
            record.update(load_seconds=round(outcome["load_seconds"], 3), warmup_requests=outcome["warmup_requests"],
                          tensorflow=outcome["tensorflow"], sys_path=outcome["sys_path"],
                          project_modules=outcome["project_modules"],
                          latency_ms={"p50": round(outcome["p50"], 3), "p99": round(outcome["p99"], 3),
                                      "requests": outcome["requests"]})
            record["canaries"] = [_compare(scratch, batch, expected[:batch], tolerance) for batch in batch_sizes]
            wrong = [c["problem"] for c in record["canaries"] if c.get("problem")]
            record["passed"] = not wrong
            record["reason"] = wrong[0] if wrong else None
            return record
        return record
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _one_try(python: str, scratch: Path, load_timeout_s: float) -> dict:
    """One clean process: its verdict, or a timeout or a crash."""
    script = scratch / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "TMPDIR": str(scratch / "tmp"), "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    started = time.perf_counter()
    with open(scratch / "stderr.log", "wb") as stderr:
        child = subprocess.Popen([python, "-S", "-I", str(script), site_packages(), str(scratch / "config.json")],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, cwd=scratch, env=env)
        lines: queue.Queue = queue.Queue()

        def read():
            for raw in child.stdout:
                text = raw.decode(errors="replace")
                if text.startswith(MARK):
                    lines.put(json.loads(text[len(MARK):]))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        seen: dict = {}
        try:
            for waiting_for, limit in (("imported", IMPORT_TIMEOUT_S), ("loaded", load_timeout_s),
                                       ("answered", REQUEST_TIMEOUT_S)):
                deadline = time.monotonic() + limit
                while waiting_for not in seen:
                    try:
                        message = lines.get(timeout=max(deadline - time.monotonic(), 0))
                    except queue.Empty:
                        what = {"imported": "importing TensorFlow", "loaded": "loading the SavedModel",
                                "answered": "answering the canary and latency requests"}[waiting_for]
                        return {"outcome": "timeout", "seconds": round(time.perf_counter() - started, 3),
                                "reason": f"{what} took longer than {limit:g}s"
                                          + (" (export.infra_load_timeout_s)" if waiting_for == "loaded" else "")}
                    if message is None:
                        child.wait(timeout=30)
                        last = _last_line(scratch / "stderr.log")
                        return {"outcome": "crashed", "seconds": round(time.perf_counter() - started, 3),
                                "reason": f"the clean process exited with status {child.returncode} before "
                                          f"{waiting_for.replace('answered', 'answering')}" + (f": {last}" if last else "")}
                    if message["event"] == "refused":
                        return {"outcome": "refused", "stage": message["stage"], "reason": message["reason"],
                                "seconds": round(time.perf_counter() - started, 3)}
                    seen[message["event"]] = message
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
    fields = {k: v for m in seen.values() for k, v in m.items() if k != "event"}
    return {"outcome": "answered", "seconds": round(time.perf_counter() - started, 3), **fields}


def _compare(scratch: Path, batch: int, expected: np.ndarray, tolerance: float) -> dict:
    probabilities = np.load(scratch / f"canary-{batch}-probabilities.npy")
    classes = np.load(scratch / f"canary-{batch}-classes.npy")
    result = {"batch": batch, "probabilities": [str(probabilities.dtype), list(probabilities.shape)],
              "classes": [str(classes.dtype), list(classes.shape)]}
    if probabilities.shape != expected.shape or probabilities.dtype != np.float32 or classes.dtype != np.int64 \
            or classes.shape != (batch,):
        result["problem"] = (f"canary batch {batch}: answers of shape {probabilities.shape} {probabilities.dtype} and "
                             f"{classes.shape} {classes.dtype}, expected {expected.shape} float32 and ({batch},) int64")
        return result
    result["max_abs_diff"] = max_diff = float(np.abs(probabilities - expected).max())
    result["classes_differ"] = differ = int((classes != expected.argmax(1)).sum())
    argmax_differ = int((probabilities.argmax(1) != expected.argmax(1)).sum())
    if max_diff > tolerance or differ or argmax_differ:
        result["problem"] = (f"canary batch {batch}: the clean process's answers differ from the training process's "
                             f"(max |diff| {max_diff:.2e}, tolerance {tolerance:g}; "
                             f"{max(differ, argmax_differ)} of {batch} classes differ)")
    return result


def _last_line(path: Path) -> str:
    """The child's last stderr line that is not TensorFlow's start-up chatter."""
    try:
        lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    useful = [l for l in lines if not l.startswith(("WARNING: All log messages", "I0000", "W0000"))]
    return (useful or lines or [""])[-1][:300]


def summary(record: dict) -> dict:
    """What export's record (the manifest's result) and push.json carry of it."""
    return {k: record.get(k) for k in ("passed", "reason", "load_seconds", "latency_ms", "tries")}
