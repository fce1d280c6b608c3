"""Batch inference: users' photos and TFRecords scored by a served model as a Beam job, the
doubtful ones queued in the layout `ingest.extra_dir` reads."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.user_images import render_like_a_user
from conftest import small_overrides
from components.common.records import read_examples
from pipeline.__main__ import main
from pipeline.config import load_config

HOSTILE = "$(touch pwned) <img src=x>.jpg"


@pytest.fixture
def inbox(full_run, tmp_path):
    """Test digits photographed as users do, a corrupt picture, a note, and a hostile name."""
    images, _ = read_examples(full_run[1] / "ingest", "test")
    folder = tmp_path / "inbox"
    (folder / "day 1").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(24):
        render_like_a_user(images[i], rng).save(folder / "day 1" / f"photo-{i}.jpg", quality=90)
    render_like_a_user(images[24], rng).save(folder / HOSTILE, format="JPEG")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("the photos of Monday")
    return folder


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_infer_scores_every_good_file_lists_the_bad_ones_and_queues_the_doubtful(store, inbox, tmp_path, capsys):
    assert main(["--artifacts", str(store), "infer", str(inbox), "--set", "infer.review_below=0.95"]) == 0
    [folder] = (store / "inference").iterdir()
    assert str(folder) in capsys.readouterr().out
    predictions = _lines(folder / "predictions.jsonl")
    assert sorted(p["file"] for p in predictions) == sorted(
        str(p) for p in inbox.rglob("*.jpg"))  # every good file, once
    for p in predictions:
        assert len(p["top3"]) == 3 and p["top3"][0] == {"digit": p["digit"], "probability": p["probability"]}
    bad = {Path(b["file"]).name: b["reason"] for b in _lines(folder / "bad_files.jsonl")}
    assert set(bad) == {"broken.png", "notes.txt"} and "not an image" in bad["notes.txt"]

    doubtful = [p for p in predictions if p["probability"] < 0.95]
    assert doubtful and len(doubtful) < len(predictions)  # the threshold splits the photos
    queued = sorted(str(p.relative_to(folder / "review")) for p in (folder / "review").rglob("*") if p.is_file())
    assert queued == sorted(str(Path(p["queued"]).relative_to("review")) for p in doubtful)
    assert all(p.get("queued") is None for p in predictions if p["probability"] >= 0.95)
    for p in doubtful:  # <predicted digit>/<file name>, the original bytes, a safe name
        target = folder / p["queued"]
        assert target.parent.name == str(p["digit"]) and target.read_bytes() == Path(p["file"]).read_bytes()
        assert target.name.startswith(Path(p["file"]).stem.replace(" ", "_")[:5].replace("$", "_"))
    assert not any(c in name for name in queued for c in " $()<>")
    assert not (Path.cwd() / "pwned").exists()
    summary = json.loads((folder / "manifest.json").read_text())["result"]
    assert summary["images"] == 25 and summary["queued"] == len(doubtful) and summary["bad"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["bad_files.jsonl", "manifest.json", "predictions.jsonl",
                                                         "review", "summary.json"]  # no Beam temp left


def test_a_queued_image_moved_into_extra_dir_changes_ingests_fingerprint(store, inbox, tmp_path):
    from pipeline.graph import STEPS

    assert main(["--artifacts", str(store), "infer", str(inbox), "--set", "infer.review_below=1.0"]) == 0
    [folder] = (store / "inference").iterdir()
    extra = tmp_path / "extra"
    (extra / "1").mkdir(parents=True)
    key = lambda: STEPS["ingest"].configure(load_config([f"ingest.extra_dir={extra}"]), None, {})[1]  # noqa: E731
    before = key()
    queued = next((folder / "review").rglob("*.jpg"))
    shutil.move(queued, extra / "1" / queued.name)  # a person files it under the right digit
    assert key() != before


def test_tfrecords_are_scored_and_a_disagreeing_previous_version_queues_the_image(store, full_run, tmp_path):
    from components import serving
    from components.export import export
    from components.train import train
    from pipeline.inference import run_inference

    run_dir = full_run[1]
    other = tmp_path / "other"
    train(run_dir / "preprocess", other, preset="seed-000", epochs=1, stop="none", seed=5)
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "blessing.json").write_text(json.dumps({"blessed": False, "reasons": ["test"]}))
    export(other, tmp_path / "evaluation", run_dir / "ingest", tmp_path / "exported", verify_examples=16)
    base = store / "serving" / "mnist"
    assert serving.push(tmp_path / "exported" / "saved_model", base, {"run": "other"}) == 2

    cfg = load_config(small_overrides(None, **{"infer.review_below": 0.0}))  # only disagreement queues
    folder = run_inference(cfg, store, [run_dir / "ingest" / next(p.name for p in (run_dir / "ingest").glob("test-*"))])
    predictions = _lines(folder / "predictions.jsonl")
    assert len(predictions) == 500 and all("#" in p["file"] for p in predictions)  # one per record
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"] == str(base / "2") and manifest["previous_model"] == str(base / "1")
    disagree = [p for p in predictions if p["previous_digit"] != p["digit"]]
    assert disagree and all("the previous version reads" in p["review"] for p in disagree)
    assert len(list((folder / "review").rglob("*.png"))) == len(disagree)  # a record queued as a PNG
    assert all(p["review"] is None for p in predictions if p["previous_digit"] == p["digit"])


def test_a_nightly_scores_its_inbox_after_the_push(store, inbox, tfds_dir):
    from pipeline.nightly import nightly

    status, summary = nightly(load_config(small_overrides(tfds_dir, **{"nightly.infer_dir": inbox})), store)
    assert status == 0, summary["error"]
    assert summary["inference"]["images"] == 25 and summary["inference"]["bad"] == 2
    assert Path(summary["inference"]["folder"]).parent == store / "inference"
