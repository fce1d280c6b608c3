import errno
import json
import logging
import os
import random
import shutil
import subprocess
import sys

import pytest

from components import serving
from conftest import REPO, small_overrides
from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.runner import run


@pytest.fixture
def saved_model(full_run):
    return full_run[1] / "export" / "saved_model"


def test_push_publishes_numbered_versions_with_their_record(saved_model, tmp_path):
    base = tmp_path / "mnist"
    assert serving.push(saved_model, base, {"run": "r1", "test_accuracy": 0.9}) == 1
    assert serving.push(saved_model, base, {"run": "r2", "test_accuracy": 0.95}) == 2
    assert serving.versions(base) == [1, 2] and serving.current_version(base) == 2
    rows = serving.listing(base)
    assert [(r["version"], r["run"], r["current"], r["replaces"]) for r in rows] == [
        (1, "r1", False, None), (2, "r2", True, 1)]
    assert (base / "2" / "saved_model.pb").is_file()
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # no staging left


@pytest.mark.parametrize("fail_after_files", [0, 1, 3])
def test_interrupted_push_leaves_the_previous_version_serving(saved_model, tmp_path, fail_after_files):
    base = tmp_path / "mnist"
    serving.push(saved_model, base, {"run": "good"})
    before = sorted(str(p.relative_to(base)) for p in (base / "1").rglob("*"))

    def copy_then_crash(src, dst):
        copied = 0

        def copy_file(s, d):
            nonlocal copied
            if copied == fail_after_files:
                raise OSError("disk full (simulated)")
            copied += 1
            return shutil.copy2(s, d)

        shutil.copytree(src, dst, copy_function=copy_file)

    # One line naming the cause, not shutil.Error's list of every file's paths.
    with pytest.raises(serving.ServingError, match=r"^could not stage the model in .*mnist \(disk full \(simulated\)\); "
                                                   r"nothing was pushed, version 1 still serves$"):
        serving.push(saved_model, base, {"run": "bad"}, copy=copy_then_crash)
    assert serving.versions(base) == [1]
    assert sorted(str(p.relative_to(base)) for p in (base / "1").rglob("*")) == before
    assert sorted(p.name for p in base.iterdir()) == ["1"]  # the staging copy is gone too


def test_rollback_serves_the_earlier_model_again(saved_model, tmp_path):
    base = tmp_path / "mnist"
    serving.push(saved_model, base, {"run": "r1", "test_accuracy": 0.99})
    serving.push(saved_model, base, {"run": "r2", "test_accuracy": 0.98})
    assert serving.rollback(base) == 3  # default: what version 2 replaced
    record = serving.read_push_record(base, 3)
    assert (record["rollback_of"], record["run"], record["test_accuracy"], record["replaces"]) == (1, "r1", 0.99, 2)
    assert serving.rollback(base, 2) == 4
    with pytest.raises(serving.ServingError, match="no version 9"):
        serving.rollback(base, 9)
    with pytest.raises(serving.ServingError, match="already the one served"):
        serving.rollback(base, 4)
    with pytest.raises(serving.ServingError, match="no served versions"):
        serving.rollback(tmp_path / "empty")


def test_nightly_flow_pushes_only_models_at_least_as_good(full_run, tmp_path, tfds_dir, capsys):
    root = tmp_path / "artifacts"
    shutil.copytree(full_run[0], root)  # version 1 is served, from the full run
    base = root / "serving" / "mnist"
    assert serving.versions(base) == [1]

    # A worse candidate: one short epoch on a few hundred images.
    worse = run(load_config(small_overrides(tfds_dir, **{
        "ingest.train_split": "train[:200]", "train.epochs": 1, "train.batch_size": 256,
        # 200 images are too few for the class-share bounds; this test is about the blessing.
        "validation.warn_only": "[class_balance, skew_classes, drift_classes]"})), root)
    blessing = json.loads((worse / "evaluate" / "blessing.json").read_text())
    assert blessing["blessed"] is False
    assert any("trails the served model" in reason for reason in blessing["reasons"])
    assert blessing["baseline"]["model"] == str(base / "1")
    export = json.loads((worse / "export" / "export.json").read_text())
    assert export["pushed"] is False and export["not_pushed_because"] == blessing["reasons"]
    assert serving.versions(base) == [1]

    # A better one: more data and epochs than version 1 had.
    better = run(load_config(small_overrides(tfds_dir, **{
        "ingest.train_split": "train[:6000]", "train.epochs": 3, "evaluate.max_recall_drop": 0.2,
        "validation.warn_only": "[drift_classes]"})), root)  # drifts from the 200-image sample, rightly
    assert json.loads((better / "evaluate" / "blessing.json").read_text())["blessed"] is True
    assert serving.versions(base) == [1, 2]
    assert serving.read_push_record(base, 2)["run"] == better.name

    assert main(["--artifacts", str(root), "models"]) == 0
    listing = capsys.readouterr().out
    assert better.name in listing and full_run[1].name in listing
    assert main(["--artifacts", str(root), "rollback", "1"]) == 0
    assert serving.read_push_record(base, 3)["rollback_of"] == 1


def test_an_unloadable_served_version_is_replaced_by_a_good_model(full_run, tmp_path, tfds_dir, caplog):
    """Truncated saved_model.pb in the served version, and an empty numbered folder above it."""
    root = tmp_path / "artifacts"
    shutil.copytree(full_run[0], root)
    base = root / "serving" / "mnist"
    pb = base / "1" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 2])
    (base / "2").mkdir()  # a numbered folder with no SavedModel: not a version
    assert serving.versions(base) == [1] and serving.broken(base / "1") == "saved_model.pb is truncated or not a SavedModel"
    models = subprocess.run([sys.executable, "-m", "pipeline", "--artifacts", str(root), "models"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert "BROKEN: saved_model.pb is truncated" in models.stdout

    with caplog.at_level(logging.WARNING):
        run_dir = run(load_config(small_overrides(tfds_dir, **{"train.epochs": 1})), root)
    blessing = json.loads((run_dir / "evaluate" / "blessing.json").read_text())
    assert blessing["blessed"] and blessing["baseline"] is None
    assert "cannot be loaded" in blessing["warnings"][0] and str(base / "1") in blessing["warnings"][0]
    assert any("cannot be loaded" in r.getMessage() for r in caplog.records)
    assert serving.versions(base) == [1, 3] and serving.broken(base / "3") is None  # above the broken one and the empty folder


def _garble(version, rng=random.Random(0)):
    pb = version / "saved_model.pb"
    pb.write_bytes(rng.randbytes(pb.stat().st_size))  # the same size: a size check cannot see it


def _other_protobuf(version):
    (version / "saved_model.pb").write_bytes(b"\x08\x01")  # saved_model_schema_version = 1, no MetaGraph


def _no_serving_signature(version):
    tags = b"\x22\x05train"  # MetaInfoDef.tags = "train"
    meta_graph = b"\x0a" + bytes([len(tags)]) + tags
    (version / "saved_model.pb").write_bytes(b"\x08\x01\x12" + bytes([len(meta_graph)]) + meta_graph)


def _truncated_shard(version):
    [data] = (version / "variables").glob("variables.data-*")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


@pytest.mark.parametrize("damage, reason", [
    (_garble, "saved_model.pb is truncated or not a SavedModel"),
    (_other_protobuf, "saved_model.pb holds no MetaGraph"),
    (_no_serving_signature, "saved_model.pb has no MetaGraph tagged 'serve' with the signature 'serving_default'"),
    (lambda version: shutil.rmtree(version / "variables"), "variables/variables.index is missing"),
    (_truncated_shard, "variables/variables.data-00000-of-00001 has"),
])
def test_rollback_refuses_a_version_that_tf_serving_could_not_load(saved_model, tmp_path, capsys, damage, reason):
    root = tmp_path / "artifacts"
    base = root / "serving" / "mnist"
    for run_id in ("r1", "r2", "r3"):
        serving.push(saved_model, base, {"run": run_id, "model_fingerprint": run_id})
    assert [serving.broken(base / str(v)) for v in (1, 2, 3)] == [None, None, None]  # a real export is whole
    damage(base / "2")
    assert serving.broken(base / "2").startswith(reason)

    assert main(["--artifacts", str(root), "models"]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("2 ")]
    assert f"BROKEN: {reason}" in row
    assert main(["--artifacts", str(root), "rollback", "2"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: version 2 is BROKEN ({reason}") and line.endswith(
        "nothing was rolled back, version 3 still serves; whole versions to roll back to: 1")
    assert serving.versions(base) == [1, 2, 3]  # nothing was published


def test_the_served_tree_is_written_by_its_owner_alone_whatever_the_umask(saved_model, tmp_path):
    loose = tmp_path / "loose"  # an export written under umask 000: everything writable by everyone
    shutil.copytree(saved_model, loose)
    for path in [loose, *loose.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    serving_root = tmp_path / "artifacts" / "serving"
    previous = os.umask(0)
    try:
        base = serving_root / "mnist"
        serving.push(loose, base, {"run": "r1"})
        serving.push(loose, base, {"run": "r2"})
        serving.rollback(base, 1)
    finally:
        os.umask(previous)
    tree = [serving_root, *serving_root.rglob("*")]
    assert serving.push_lock(base) in tree and base / "3" / serving.PUSH_RECORD in tree
    writable = [str(p.relative_to(tmp_path)) for p in tree if p.stat().st_mode & 0o022]
    assert writable == []


def test_a_push_on_a_full_disk_says_what_to_do(saved_model, tmp_path):
    base = tmp_path / "mnist"
    serving.push(saved_model, base, {"run": "r1"})

    def full_disk(source, destination):
        raise OSError(errno.ENOSPC, "No space left on device", str(destination))

    with pytest.raises(serving.ServingError) as refused:
        serving.push(saved_model, base, {"run": "r2"}, copy=full_disk)
    assert "No space left on device" in str(refused.value)
    assert str(refused.value).endswith("version 1 still serves; free some space and run the same command again")
    assert serving.versions(base) == [1] and sorted(p.name for p in base.iterdir()) == ["1"]
