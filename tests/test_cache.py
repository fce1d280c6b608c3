"""The cache: what re-runs after which change, on real runs over a slice of MNIST."""
import json
import logging
import shutil

import pytest

from conftest import REPO, small_overrides
from pipeline import fingerprint
from pipeline.config import load_config
from pipeline.graph import STEPS
from pipeline.runner import run


def _statuses(run_dir):
    return {name: c["status"] for name, c in json.loads((run_dir / "run.json").read_text())["components"].items()}


def _run(store, tfds_dir, **settings):
    return run(load_config(small_overrides(tfds_dir, **settings)), store)


def test_an_identical_run_executes_no_component(store, full_run, tfds_dir):
    run_dir = _run(store, tfds_dir)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded"
    assert all(c["status"] == "cached" and c["from_run"] == full_run[1].name for c in record["components"].values())
    assert list(record["components"]) == list(STEPS)
    # Nothing made, nothing copied: only the run's record, log and report.
    assert sorted(p.name for p in run_dir.iterdir()) == ["report", "report.html", "run.json", "run.log"]
    assert record["components"]["train"]["reused"] == str(store / "runs" / full_run[1].name / "train")
    log = (run_dir / "run.log").read_text()
    assert all(f"{name} cached (from run {full_run[1].name})" in log for name in STEPS)
    assert sorted(p.name for p in (store / "serving" / "mnist").iterdir()) == ["1"]  # nothing pushed


def test_changing_epochs_reruns_train_evaluate_and_export_only(store, tfds_dir):
    statuses = _statuses(_run(store, tfds_dir, **{"train.epochs": 1}))
    assert statuses == {"ingest": "cached", "preprocess": "cached", "validate": "cached", "train": "succeeded",
                        "evaluate": "succeeded", "export": "succeeded"}


def test_changing_the_data_slice_reruns_everything(store, tfds_dir):
    statuses = _statuses(_run(store, tfds_dir, **{"ingest.train_split": "train[:1500]"}))
    assert set(statuses.values()) == {"succeeded"}


def test_editing_a_module_preprocess_imports_reruns_preprocess_and_downstream(store, tfds_dir, tmp_path, monkeypatch):
    source = tmp_path / "source"
    for package in ("components", "pipeline"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(source / "components" / "common" / "transform.py", "a") as f:
        f.write("\n# an edit to the scaling module, which preprocess imports (ingest does not)\n")
    monkeypatch.setattr(fingerprint, "ROOT", source)
    statuses = _statuses(_run(store, tfds_dir))
    # Preprocess makes the same records again, so validate (keyed on their content) is reused;
    # train imports the scaling module itself, so it and what follows it run.
    assert statuses == {"ingest": "cached", "preprocess": "succeeded", "validate": "cached", "train": "succeeded",
                        "evaluate": "succeeded", "export": "succeeded"}


def test_editing_the_model_card_template_reruns_export_only(store, full_run, tfds_dir, tmp_path, monkeypatch):
    source = tmp_path / "source"
    for package in ("components", "pipeline"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    template = source / "components" / "serving" / "templates" / "model_card.md.j2"
    template.write_text(template.read_text() + "\nReviewed by the platform team.\n")
    monkeypatch.setattr(fingerprint, "ROOT", source)
    assert fingerprint.code_digest("components.export", source) != fingerprint.code_digest("components.export", REPO)
    assert fingerprint.code_digest("components.train", source) == fingerprint.code_digest("components.train", REPO)
    run_dir = _run(store, tfds_dir)
    assert _statuses(run_dir) == {"ingest": "cached", "preprocess": "cached", "validate": "cached", "train": "cached",
                                  "evaluate": "cached", "export": "succeeded"}
    # The same model, already served: nothing new is pushed.
    export = json.loads((run_dir / "export" / "export.json").read_text())
    assert export["pushed"] is False and export["already_served"] == 1


def test_a_deleted_output_is_recomputed(store, full_run, tfds_dir):
    shutil.rmtree(store / "runs" / full_run[1].name / "preprocess")
    statuses = _statuses(_run(store, tfds_dir))
    # Recomputed with the same fingerprint, so what follows it is still reused.
    assert statuses == {"ingest": "cached", "preprocess": "succeeded", "validate": "cached", "train": "cached",
                        "evaluate": "cached", "export": "cached"}


def test_a_corrupt_manifest_is_a_warning_and_a_recompute(store, full_run, tfds_dir, caplog):
    manifest = store / "runs" / full_run[1].name / "train" / "manifest.json"
    manifest.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        statuses = _statuses(_run(store, tfds_dir))
    assert statuses["train"] == "succeeded" and statuses["ingest"] == statuses["preprocess"] == "cached"
    assert any(str(manifest) in r.getMessage() and "unreadable manifest" in r.getMessage() for r in caplog.records)


def test_rerun_forces_a_component_and_what_depends_on_it(store, tfds_dir):
    run_dir = run(load_config(small_overrides(tfds_dir)), store, rerun=["train"])
    assert _statuses(run_dir) == {"ingest": "cached", "preprocess": "cached", "validate": "cached", "train": "succeeded",
                                  "evaluate": "succeeded", "export": "succeeded"}
    # The same seed retrained the same model, which is already served: no second copy.
    export = json.loads((run_dir / "export" / "export.json").read_text())
    assert export["pushed"] is False and export["already_served"] == 1
    assert sorted(p.name for p in (store / "serving" / "mnist").iterdir()) == ["1"]


def test_named_components_execute_unless_told_to_reuse_the_cache(store, tfds_dir):
    cfg = load_config(small_overrides(tfds_dir))
    assert _statuses(run(cfg, store, ["ingest", "preprocess"])) == {"ingest": "succeeded", "preprocess": "succeeded"}
    # As benchmarks run them: what matches is reused, so their trainings read the same records.
    reused = run(cfg, store, ["ingest", "preprocess"], execute_named=False)
    assert _statuses(reused) == {"ingest": "cached", "preprocess": "cached"}


def test_no_cache_executes_everything(store, tfds_dir):
    run_dir = run(load_config(small_overrides(tfds_dir)), store, use_cache=False)
    assert set(_statuses(run_dir).values()) == {"succeeded"}


def test_a_damaged_cached_output_is_recomputed_and_a_damaged_input_is_named(store, full_run, tfds_dir, caplog):
    from pipeline.runner import DamagedInputError
    from pipeline.store import ArtifactStore

    first = store / "runs" / full_run[1].name
    cfg = load_config(small_overrides(tfds_dir))
    shard = next((first / "preprocess").glob("train-*.tfrecord"))
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated: TensorFlow said only "Graph execution error:"
    # A component run alone reads its input as it is: the one line names the file and the fix.
    with pytest.raises(DamagedInputError, match=rf"^the preprocess output in {first / 'preprocess'} is damaged: "
                                                rf"{shard} has 1000 bytes, its manifest says \d+; "
                                                rf"recompute it: python -m pipeline run --rerun preprocess$"):
        run(cfg, store, ["train"])
    # A whole run does not reuse it: preprocess executes again, with a warning naming the file.
    statuses = _statuses(run(cfg, store, rerun=["train"]))
    assert statuses["ingest"] == "cached" and statuses["preprocess"] == "succeeded"
    assert f"not reusing the preprocess output of run {first.name}: {shard} has 1000 bytes" in caplog.text

    # Same size, other bytes: found by the checksum once reading it fails (Keras: "File not found").
    model = ArtifactStore(store).latest("train").path / "model.keras"
    model.write_bytes(b"\0" * model.stat().st_size)
    with pytest.raises(DamagedInputError, match=rf"the train output in {model.parent} is damaged: {model} does not "
                                                rf"have the bytes its manifest records.*--rerun train$") as err:
        run(cfg, store, ["evaluate"])
    assert err.value.component == "evaluate"


def _edited_copy(tmp_path, monkeypatch, module: str, line: str):
    """The project's source copied, with `line` appended to one module: a comment-only edit."""
    source = tmp_path / "source"
    for package in ("components", "pipeline"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(source / module, "a") as f:
        f.write(f"\n{line}\n")
    monkeypatch.setattr(fingerprint, "ROOT", source)


def test_a_comment_edit_of_ingest_executes_ingest_and_reuses_everything_after_it(store, full_run, tfds_dir,
                                                                                  tmp_path, monkeypatch, caplog):
    _edited_copy(tmp_path, monkeypatch, "components/ingest.py", "# a comment: the same records come out")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run_dir = _run(store, tfds_dir)
    assert _statuses(run_dir) == {"ingest": "succeeded", "preprocess": "cached", "validate": "cached",
                                  "train": "cached", "evaluate": "cached", "export": "cached"}
    assert f"ingest executed: same content as run {full_run[1].name}; downstream unaffected" in caplog.text


def test_an_edit_of_the_saved_model_client_reruns_evaluate_and_export_not_train(store, tfds_dir, tmp_path, monkeypatch):
    _edited_copy(tmp_path, monkeypatch, "components/serving/client.py", "# an edit to how a SavedModel is called")
    assert _statuses(_run(store, tfds_dir)) == {"ingest": "cached", "preprocess": "cached", "validate": "cached",
                                                "train": "cached", "evaluate": "succeeded", "export": "succeeded"}
