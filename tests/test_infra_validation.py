"""Infra validation: what is pushed is first loaded and called by a clean process (TensorFlow only)."""
import json
import sys
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components import export as export_component
from components import serving
from components.common.records import iter_examples
from components.serving import infra_validator
from components.serving.client import predict_saved_model
from conftest import REPO
from pipeline.fingerprint import served_digest

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def canary(full_run):
    run_dir = full_run[1]
    saved_model = run_dir / "export" / "saved_model"
    images, _ = next(iter_examples(run_dir / "ingest", "test", 16))
    return saved_model, images, predict_saved_model(saved_model, images)


def test_a_good_model_passes_and_the_pushed_bytes_are_the_validated_ones(full_run):
    root, run_dir, _ = full_run
    record = json.loads((run_dir / "export" / "infra_validation.json").read_text())
    print(json.dumps({k: record[k] for k in ("load_seconds", "latency_ms", "tries", "warmup_requests")}))
    assert record["passed"] is True and record["reason"] is None and record["tries"] == 1
    assert record["attempts"][0]["outcome"] == "answered"
    assert record["load_seconds"] > 0 and 0 < record["latency_ms"]["p50"] <= record["latency_ms"]["p99"]
    assert record["latency_ms"]["requests"] == 100 and record["warmup_requests"] == export_component.WARMUP_IMAGES
    assert [c["batch"] for c in record["canaries"]] == [1, 64]
    assert all(c["max_abs_diff"] <= export_component.TOLERANCE and c["classes_differ"] == 0 for c in record["canaries"])
    # The clean process saw the standard library and site-packages, no checkout and no project module.
    assert record["sys_path"][-1] == infra_validator.site_packages()
    venv = Path(sys.prefix).resolve()  # may itself lie in the checkout (.venv), as in CI
    assert not any(Path(p).resolve().is_relative_to(REPO) and not Path(p).resolve().is_relative_to(venv)
                   for p in record["sys_path"] if p)

    exported = json.loads((run_dir / "export" / "export.json").read_text())
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    for summary in (exported["infra_validation"], manifest["result"]["infra_validation"]):
        assert summary == {k: record[k] for k in ("passed", "reason", "load_seconds", "latency_ms", "tries")}
    assert exported["pushed"] is True
    served = root / "serving" / "mnist" / "1"
    assert json.loads((served / "assets.extra" / "push.json").read_text())["infra_validation"]["load_seconds"] \
        == record["load_seconds"]
    # What serves is what was validated, file for file (push.json aside), warm-up file and card included.
    validated = run_dir / "export" / "saved_model"
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(served) == sorted([*files(validated), "assets.extra/push.json"])
    assert served_digest(served) == served_digest(validated)
    warmup = "assets.extra/tf_serving_warmup_requests"
    assert (served / warmup).read_bytes() == (validated / warmup).read_bytes()
    for name in ("model_card.html", "model_card.md"):  # the same card, with the number the push gave it
        stamped = (validated / "assets.extra" / name).read_text().replace("Served as: not pushed yet.",
                                                                         "Served as: version 1.")
        assert (served / "assets.extra" / name).read_text() == stamped != (validated / "assets.extra" / name).read_text()
    assert not (run_dir / "export" / ".infra-validation").exists()  # the child's scratch is gone
    # Linked from the index, relative to it: it opens from disk or over HTTP alike.
    assert '<a href="serving/mnist/1/assets.extra/model_card.html">model card</a>' in (root / "index.html").read_text()


def test_the_clean_process_ignores_our_path_and_leaves_no_temp_file(canary, monkeypatch, tmp_path):
    saved_model, images, expected = canary
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # -I ignores it: still no project module
    system_temp = tmp_path / "system-temp"  # the machine's is shared with other processes: one of our own
    system_temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_temp))
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    record = infra_validator.validate(saved_model, images, expected, batch_sizes=(1, 16), latency_requests=10,
                                      scratch=None)
    assert record["passed"], record["reason"]
    venv = Path(sys.prefix).resolve()  # may itself lie in the checkout (.venv), as in CI
    assert not any(Path(p).resolve().is_relative_to(REPO) and not Path(p).resolve().is_relative_to(venv)
                   for p in record["sys_path"] if p)
    assert list(system_temp.iterdir()) == []
    assert not (saved_model.parent / ".infra-validation").exists()


def test_different_canary_answers_are_refused(canary, tmp_path):
    saved_model, images, expected = canary
    wrong = np.roll(expected, 1, axis=1)  # every image's answer one digit off
    record = infra_validator.validate(saved_model, images, wrong, batch_sizes=(1, 16), latency_requests=5,
                                      scratch=tmp_path / "scratch")
    assert record["passed"] is False and record["tries"] == 1
    assert record["reason"].startswith("canary batch 1: the clean process's answers differ from the training process's")
    assert "1 of 1 classes differ" in record["reason"]
    assert record["canaries"][1]["classes_differ"] == 16


def test_a_load_over_the_timeout_is_retried_then_refused(canary, tmp_path):
    saved_model, images, expected = canary
    record = infra_validator.validate(saved_model, images, expected, load_timeout_s=0.01, tries=2,
                                      scratch=tmp_path / "scratch")
    assert record["passed"] is False and record["tries"] == 2
    assert [a["outcome"] for a in record["attempts"]] == ["timeout", "timeout"]
    assert record["reason"] == ("loading the SavedModel took longer than 0.01s (export.infra_load_timeout_s) "
                                "(after 2 tries)")
    assert record["load_seconds"] is None and not (tmp_path / "scratch").exists()


def test_truncated_variables_are_refused(canary, tmp_path):
    saved_model, images, expected = canary
    broken = tmp_path / "saved_model"
    shutil.copytree(saved_model, broken)
    [data] = (broken / "variables").glob("variables.data-*")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    record = infra_validator.validate(broken, images, expected, tries=3, scratch=tmp_path / "scratch")
    assert record["passed"] is False
    assert record["tries"] == 1  # a verdict, not a timeout: not tried again
    assert record["attempts"][0]["stage"] == "load"
    assert record["reason"] == "tf.saved_model.load failed: Read less bytes than requested"


def test_a_signature_with_the_wrong_dtype_is_refused(canary, tmp_path):
    _, images, expected = canary

    class Floats(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="images")])
        def serve(self, images):
            probabilities = tf.nn.softmax(tf.zeros([tf.shape(images)[0], 10]))
            return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    module = Floats()
    tf.saved_model.save(module, str(tmp_path / "floats"), signatures={"serving_default": module.serve})
    record = infra_validator.validate(tmp_path / "floats", images, expected, scratch=tmp_path / "scratch")
    assert record["passed"] is False and record["attempts"][0]["stage"] == "signature"
    assert record["reason"] == ("serving_default input 'images' is DT_FLOAT [-1, 28, 28], "
                                "expected DT_UINT8 [-1, 28, 28]")


_KEEP = []  # the py_function's Python callable, alive for this process: what only it has


def _needs_this_process(net, path):
    """A SavedModel whose scaling is a Python function of this process (tf.py_function):
    it loads and answers here, and nowhere else."""
    archive = __import__("keras").export.ExportArchive()
    archive.track(net)

    def scale(images):
        return (images.numpy().astype("float32") / 255.0)[..., None]

    _KEEP.append(scale)

    @tf.autograph.experimental.do_not_convert
    def serve(images):
        scaled = tf.py_function(scale, [images], tf.float32)
        scaled.set_shape([None, 28, 28, 1])
        probabilities = net(scaled, training=False)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")])
    archive.write_out(str(path), verbose=False)
    _KEEP.append(archive)


def test_a_model_that_loads_here_but_not_in_a_clean_process_is_refused_and_not_pushed(full_run, tmp_path,
                                                                                      monkeypatch):
    root, run_dir, _ = full_run
    monkeypatch.setattr(export_component, "build_saved_model", _needs_this_process)
    base = tmp_path / "serving"
    record = export_component.export(run_dir / "train", run_dir / "evaluate", run_dir / "ingest",
                                     tmp_path / "exported", serving_root=base, verify_examples=16,
                                     infra_latency_requests=5, push_record={"run": "r", "model_fingerprint": "f"})
    assert record["verified"]["max_abs_diff"] < 1e-5  # this process loaded it and got the right answers
    infra = json.loads((tmp_path / "exported" / "infra_validation.json").read_text())
    assert infra["passed"] is False and infra["attempts"][0]["stage"] == "warmup"
    assert infra["reason"].startswith("warm-up request 1 failed: graph execution error at node EagerPyFunc: "
                                      "ValueError: Could not find callback with key=pyfunc_")
    assert record["pushed"] is False and record["blessed"] is True
    assert record["not_pushed_because"] == [f"infra validation failed: {infra['reason']}"]
    assert record["infra_validation"]["passed"] is False
    assert json.loads((tmp_path / "exported" / "export.json").read_text()) == record
    assert serving.versions(base / "mnist") == []


def test_a_pushed_version_carries_its_model_card_with_outside_text_escaped(full_run, tmp_path):
    root, run_dir, _ = full_run
    model = tmp_path / HOSTILE / "train"  # a hostile path, and a hostile training setting
    shutil.copytree(run_dir / "train", model)
    training = json.loads((model / "training.json").read_text())
    training["stop_reason"] = f"stopped {HOSTILE}"
    (model / "training.json").write_text(json.dumps(training))
    evaluation = tmp_path / "evaluate"
    shutil.copytree(run_dir / "evaluate", evaluation)
    blessing = json.loads((evaluation / "blessing.json").read_text())
    blessing["candidate"]["model"] = str(model)
    blessing["warnings"] = [f"a warning about {HOSTILE}"]
    (evaluation / "blessing.json").write_text(json.dumps(blessing))

    base = tmp_path / "serving"
    record = export_component.export(model, evaluation, run_dir / "ingest", tmp_path / "exported",
                                     serving_root=base, verify_examples=16, infra_latency_requests=5,
                                     push_record={"run": "run-x", "model_fingerprint": "abc123"})
    assert record["pushed"] is True and record["version"] == 1
    card = base / "mnist" / "1" / "assets.extra"
    html, markdown = (card / "model_card.html").read_text(), (card / "model_card.md").read_text()
    assert HOSTILE not in html and html.count("&lt;img src=x onerror=alert(1)&gt;") == 3  # path, setting, warning
    assert "<script" not in html and 'src="http' not in html and 'href="http' not in html  # nothing fetched
    assert HOSTILE not in markdown and markdown.count("&lt;img src=x onerror=alert(1)&gt;") == 3
    ingest = json.loads((run_dir / "ingest" / "ingest.json").read_text())
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    for text in (html, markdown):
        assert "white digit on a black background" in text and ("<b>not</b> for" in text or "**not** for" in text)
        assert f"{ingest['splits']['train']['count']} images" in text and "train[:2000]" in text
        assert f"{metrics['accuracy']:.2%}" in text and "abc123" in text and "run-x" in text
        assert "tensorflow" in text and "keras" in text
        assert "Served as: version 1." in text  # the push wrote the number in; the export's own copy has none
    assert "Served as: not pushed yet." in (tmp_path / "exported" / "saved_model" / "assets.extra" / "model_card.md").read_text()
    assert "data:image/png;base64," in html  # the confusion matrix, embedded
    [row] = serving.listing(base / "mnist")
    assert row["model_card"] == "1/assets.extra/model_card.html"


def test_the_run_report_says_why_a_blessed_model_was_not_pushed(full_run, tmp_path):
    from pipeline import lineage
    from pipeline.report import build_report

    root = tmp_path / "artifacts"
    shutil.copytree(full_run[0], root)
    run_dir = root / "runs" / full_run[1].name
    manifest_path = run_dir / "export" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    reason = f"{infra_validator.REFUSED}: loading the SavedModel took longer than 60s {HOSTILE}"
    manifest["result"].update(pushed=False, not_pushed_because=[reason])
    manifest["result"].pop("version")
    manifest_path.write_text(json.dumps(manifest))
    shutil.rmtree(root / "serving")  # and no push record names the run
    html = build_report(run_dir).read_text()
    assert "blessed</b>, not pushed by this run." in html
    assert "&bull; infra validation failed: loading the SavedModel took longer than 60s &lt;img src=x" in html
    assert lineage.show_run(root, run_dir.name)["components"]["export"]["results"]["not_pushed_because"] == [reason]
