"""The users' slice: extra images held out by content, judged for both models with gates of their own."""
import json
import shutil

import numpy as np
import pytest

from benchmarks.user_images import render_like_a_user
from conftest import small_overrides
from components.common.records import read_examples, serialize_example
from components.ingest import held_out, ingest
from pipeline.config import load_config
from pipeline.nightly import nightly

GATES = {"min_accuracy": 0.0, "max_accuracy_drop": 0.02, "min_count": 5}


def _users_folder(root, images, labels, count=40):
    """Test digits as users photograph them, filed under their true digit."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        render_like_a_user(images[i], rng).save(folder / f"photo-{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def test_digits(tmp_path_factory, mirror, tfds_dir):
    source = tmp_path_factory.mktemp("digits")
    ingest(source, train_split="train[:10]", test_split="test[500:600]", manual_dir=mirror, data_dir=tfds_dir)
    return read_examples(source, "test")  # not the test slice the runs judge on


def test_the_held_out_share_is_chosen_by_content_the_same_files_every_time(tmp_path, mirror, tfds_dir, test_digits):
    extra = _users_folder(tmp_path / "extra", *test_digits)
    first = ingest(tmp_path / "a", train_split="train[:100]", test_split="test[:50]", manual_dir=mirror,
                   data_dir=tfds_dir, extra_dir=extra, extra_holdout=0.5)["extra"]
    files = sorted(p for p in extra.rglob("*.jpg"))
    expected = [p.relative_to(extra).as_posix() for p in files if held_out(p.read_bytes(), 0.5)]
    assert first["held_out"]["files"] == expected and 10 <= len(expected) <= 30
    assert first["count"] + first["held_out"]["count"] == len(files)
    moved = tmp_path / "elsewhere"  # another folder, the same pictures: the same slice
    shutil.copytree(extra, moved)
    again = ingest(tmp_path / "b", train_split="train[:100]", test_split="test[:50]", manual_dir=mirror,
                   data_dir=tfds_dir, extra_dir=moved, extra_holdout=0.5)
    assert again["extra"]["held_out"]["files"] == expected
    assert again["splits"]["users"]["count"] == len(expected)
    assert len(read_examples(tmp_path / "b", "users")[0]) == len(expected)
    assert len(read_examples(tmp_path / "b", "train")[0]) == 100 + first["count"]  # never trained on


def test_a_night_with_extra_images_reports_the_users_slice_for_both_models(full_run, tmp_path, tfds_dir, test_digits):
    root = tmp_path / "artifacts"
    shutil.copytree(full_run[0], root)  # version 1 served: the users' slice is judged for it too
    extra = _users_folder(tmp_path / "extra", *test_digits)
    settings = {"ingest.extra_dir": extra, "ingest.extra_holdout": 0.5, "evaluate.slices.users.min_count": 5,
                "evaluate.slices.users.max_accuracy_drop": 1.0, "evaluate.accuracy_tolerance": 1.0,
                "evaluate.max_recall_drop": 1.0}
    status, summary = nightly(load_config(small_overrides(tfds_dir, **settings)), root)
    assert status == 0, summary["error"]
    users = summary["slices"]["users"]
    assert users["examples"] == summary["data"]["held_out"] >= 5
    assert 0 <= users["accuracy"] <= 1 and 0 <= users["served_accuracy"] <= 1
    blessing = json.loads((root / "runs" / summary["run_id"] / "evaluate" / "blessing.json").read_text())
    assert set(blessing["slices"]) == {"test", "users"}
    assert blessing["slices"]["users"]["baseline"]["model"] == str(root / "serving" / "mnist" / "1")
    line = (root / "runs" / summary["run_id"] / "run.log").read_text().splitlines()[-1]
    assert f"users slice {users['accuracy']:.2%} vs v1 {users['served_accuracy']:.2%}" in line
    report = (root / "runs" / summary["run_id"] / "report.html").read_text()
    assert "Slices" in report and "McNemar" in report
    # The data section names the extra images: trained on, held out as the users' row, skipped.
    assert f'<td class="text">users (held out)</td><td>{users["examples"]}</td>' in report
    assert (f"<b>{summary['data']['extra_images']}</b> trained on" in report
            and f"<b>{users['examples']}</b> held out as the users' slice" in report)
    assert summary["pushed"] == 2  # and the served version's model card gives the slice
    card = (root / "serving" / "mnist" / "2" / "assets.extra" / "model_card.md").read_text()
    assert f"| users | held out from the extra images, never trained on (the users' slice): {users['examples']} images" in card
    assert f"- users: images {users['examples']}; accuracy {users['accuracy']:.2%}; served accuracy" in card
    assert "Served as: version 2." in card and "McNemar p=" in card


@pytest.fixture
def better_on_test_worse_on_users(full_run, tmp_path, test_digits):
    """A candidate that beats the served model on MNIST's test split, and a users' slice
    labelled as the served model reads it: there the candidate can only be worse."""
    from components.common.digits import to_mnist
    from components.common.records import iter_examples
    from components.serving.client import predict_saved_model
    from components.train import train
    from benchmarks.user_images import render_like_a_user as render

    root, run_dir, _ = full_run
    served = root / "serving" / "mnist" / "1"
    candidate = tmp_path / "candidate"
    train(run_dir / "preprocess", candidate, preset="seed-000", epochs=6, stop="none", seed=3)
    examples = tmp_path / "examples"
    shutil.copytree(run_dir / "ingest", examples)
    rng = np.random.default_rng(1)
    photos = np.stack([to_mnist(np.asarray(render(image, rng).convert("L"))) for image in test_digits[0][:60]])
    labels = predict_saved_model(served, photos).argmax(axis=1)
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(examples / "users-00000-of-00001.tfrecord")) as writer:
        for image, label in zip(photos, labels):
            writer.write(serialize_example(image.tobytes(), label))
    assert next(iter_examples(examples, "users"))[0].shape == (60, 28, 28)
    return candidate, examples, served


def test_a_candidate_worse_on_the_users_slice_is_not_pushed_and_the_blessing_names_the_slice(
        better_on_test_worse_on_users, tmp_path):
    from components.evaluate import evaluate
    from components.export import export

    candidate, examples, served = better_on_test_worse_on_users
    settings = dict(baseline=served, min_accuracy=0.5, accuracy_tolerance=0.001, max_recall_drop=1.0,
                    slices={"users": GATES})
    # Judged on the evidence: the served model got every photo right, so each the candidate missed is lost.
    judged = evaluate(candidate, examples, tmp_path / "judged", **settings)
    users = judged["slices"]["users"]
    assert users["baseline"]["accuracy"] == 1.0 and users["candidate"]["accuracy"] < 0.98
    pair = judged["paired"]["users"]["all"]
    assert pair["gained"] == 0 and pair["lost"] == round((1 - users["candidate"]["accuracy"]) * 60)
    assert pair["p_value"] == pytest.approx(0.5 ** pair["lost"])
    said = [t for t in judged["reasons"] + judged["warnings"] if t.startswith("users slice: accuracy")]
    assert len(said) == 1 and ("a real loss" in said[0]) == (pair["p_value"] < 0.05) == (not judged["blessed"])
    # On the point estimate alone (significance 1), any drop past the tolerance refuses, and nothing is pushed.
    blessing = evaluate(candidate, examples, tmp_path / "evaluation", **settings, significance=1.0)
    test = blessing["slices"]["test"]
    assert test["candidate"]["accuracy"] >= test["baseline"]["accuracy"]  # better where MNIST judges
    assert blessing["blessed"] is False
    assert len(blessing["reasons"]) == 1 and blessing["reasons"][0].startswith("users slice: accuracy")
    assert "evaluate.slices.users.max_accuracy_drop" in blessing["reasons"][0]
    record = export(candidate, tmp_path / "evaluation", examples, tmp_path / "exported",
                    serving_root=served.parent.parent, model_name="mnist", verify_examples=32)
    assert record["pushed"] is False and record["not_pushed_because"] == blessing["reasons"]
    assert sorted(p.name for p in served.parent.iterdir()) == ["1"]


def test_fewer_held_out_images_than_the_minimum_only_warn(better_on_test_worse_on_users, tmp_path):
    from components.evaluate import evaluate

    candidate, examples, served = better_on_test_worse_on_users
    blessing = evaluate(candidate, examples, tmp_path / "evaluation", baseline=served, min_accuracy=0.5,
                        accuracy_tolerance=0.001, max_recall_drop=1.0, slices={"users": {**GATES, "min_count": 100}})
    assert blessing["blessed"] is True and blessing["reasons"] == []
    assert blessing["warnings"][0] == ("users slice has 60 image(s), fewer than evaluate.slices.users.min_count "
                                       "(100): its gates only warn")
    assert blessing["warnings"][1].startswith("users slice: accuracy")
