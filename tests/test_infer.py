"""Batch inference: users' photos and TFRecords scored by a served model as a Beam job, the
doubtful ones queued in the layout `ingest.extra_dir` reads."""
import json
import re
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
    assert summary["already_known"] == 0  # nothing labelled or queued before
    assert sorted(p.name for p in folder.iterdir()) == ["bad_files.jsonl", "manifest.json", "predictions.jsonl",
                                                         "review", "review.html", "summary.json"]  # no Beam temp left


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
    assert summary["inference"]["already_known"] == 0
    assert Path(summary["inference"]["folder"]).parent == store / "inference"


def _records(path: Path, images: np.ndarray) -> Path:
    """A TFRecord of raw examples (ingest's format), as a user might drop into the inbox."""
    import tensorflow as tf

    from components.common.records import serialize_example

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image in images:
            writer.write(serialize_example(image.reshape(-1), 0))
    return path


def _queued_files(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "review").rglob("*") if p.is_file())


def test_an_image_labelled_or_still_waiting_in_a_queue_is_scored_but_not_queued_again(store, inbox, full_run,
                                                                                       tmp_path):
    from pipeline.inference import run_inference

    images, _ = read_examples(full_run[1] / "ingest", "test")
    records = _records(tmp_path / "records" / "batch.tfrecord", images[30:33])
    extra = tmp_path / "extra"
    extra.mkdir()
    cfg = load_config(small_overrides(None, **{"infer.review_below": 1.0, "ingest.extra_dir": extra}))  # all doubtful
    first = run_inference(cfg, store, [inbox, records])
    assert len(_queued_files(first)) == 28  # 25 pictures, 3 records as PNGs

    by_file = {p["file"]: p for p in _lines(first / "predictions.jsonl")}
    photo, record = str(inbox / "day 1" / "photo-0.jpg"), next(f for f in by_file if "#" in f)
    for source in (photo, record):  # a person files these two under the digit they are
        queued = first / by_file[source]["queued"]
        (extra / "7").mkdir(exist_ok=True)
        shutil.move(queued, extra / "7" / queued.name)
    (inbox / "new.jpg").write_bytes((inbox / "day 1" / "photo-1.jpg").read_bytes() + b"\x00")  # new bytes

    second = run_inference(cfg, store, [inbox, records])
    lines = {p["file"]: p for p in _lines(second / "predictions.jsonl")}
    assert len(lines) == 29 and all(p["review"] for p in lines.values())  # every image scored, all doubtful
    queued = _queued_files(second)
    assert [p.name for p in queued] == [Path(lines[str(inbox / "new.jpg")]["queued"]).name]  # only the new one
    labelled = f"already labelled in ingest.extra_dir (7/{Path(by_file[photo]['queued']).name})"
    assert lines[photo]["not_queued"] == labelled and "queued" not in lines[photo]
    assert lines[record]["not_queued"].startswith("already labelled in ingest.extra_dir (7/")  # known by its pixels
    waiting = lines[str(inbox / "day 1" / "photo-2.jpg")]
    assert waiting["not_queued"] == f"already queued in inference {first.name} ({by_file[waiting['file']]['queued']})"
    summary = json.loads((second / "manifest.json").read_text())["result"]
    assert summary["queued"] == 1 and summary["already_known"] == 28 and summary["images"] == 29
    assert json.loads((second / "summary.json").read_text()) == summary

    third = run_inference(cfg, store, [inbox])  # the second night's queue is waiting too
    assert not _queued_files(third)
    [new] = [p for p in _lines(third / "predictions.jsonl") if p["file"].endswith("new.jpg")]
    assert new["not_queued"] == f"already queued in inference {second.name} ({queued[0].relative_to(second)})"


def test_known_images_skips_big_files_and_links_out_of_the_folder(tmp_path):
    from pipeline import inference
    from pipeline.inference import known_images

    extra, outside = tmp_path / "extra", tmp_path / "outside.png"
    (extra / "3").mkdir(parents=True)
    (extra / "3" / "a.png").write_bytes(b"labelled")
    outside.write_bytes(b"secret")
    (extra / "3" / "link.png").symlink_to(outside)
    (extra / "3" / "inside.png").symlink_to(extra / "3" / "a.png")
    (extra / "big.png").write_bytes(b"x" * (inference.KNOWN_MAX_BYTES + 1))
    queue = tmp_path / "inference" / "20240101T000000Z-abcd"
    (queue / "review" / "4").mkdir(parents=True)
    (queue / "review" / "4" / "b.png").write_bytes(b"waiting")
    (queue / "review" / "4" / "c.png").write_bytes(b"labelled")  # also filed: labelled wins
    known = known_images(extra, [queue])
    digest = lambda data: __import__("hashlib").sha256(data).hexdigest()  # noqa: E731
    assert known == {digest(b"labelled"): "already labelled in ingest.extra_dir (3/a.png)",
                     digest(b"waiting"): f"already queued in inference {queue.name} (review/4/b.png)"}
    assert known_images(None, []) == {} and known_images(tmp_path / "missing", []) == {}


# A file name has no `/`: the script tag closes in the folder's name, so its path holds it whole.
HOSTILE_NAMES = ("<script>alert(1)</script>.png", "<img src=x onerror=alert(1)>.png", "two\nlines.png")


def test_the_review_page_shows_each_queued_image_with_its_reasons_and_escapes_names(store, full_run, tmp_path):
    from benchmarks.user_images import render_like_a_user
    from pipeline.inference import run_inference

    images, _ = read_examples(full_run[1] / "ingest", "test")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(1)
    for i, name in enumerate(HOSTILE_NAMES):
        (inbox / name).parent.mkdir(exist_ok=True)
        render_like_a_user(images[i], rng).save(inbox / name, format="PNG")
    cfg = load_config(small_overrides(None, **{"infer.review_below": 1.0}))
    folder = run_inference(cfg, store, [inbox])
    page = (folder / "review.html").read_text()

    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;.png" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;.png" in page
    assert "two\\nlines.png" in page and "two\nlines" not in page  # the newline shown as \\n, not obeyed
    for p in _lines(folder / "predictions.jsonl"):
        assert f"<strong>{p['digit']}</strong>" in page and p["review"] in page
        assert all(f"{t['digit']}: {t['probability']:.3f}" in page for t in p["top3"])
        assert f'href="{p["queued"]}"' in page  # where it waits, linked
    assert page.count('src="data:image/png;base64,') == 6  # each: the picture as read and its MNIST form
    assert "&lt;ingest.extra_dir&gt;/&lt;correct digit&gt;/" in page  # where to move it, with no extra_dir set
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched


def test_the_index_links_each_inference_to_its_review_page_newest_first(store, inbox, tmp_path):
    from pipeline.inference import run_inference

    cfg = load_config(small_overrides(None, **{"infer.review_below": 1.0}))
    first = run_inference(cfg, store, [inbox / "day 1"])
    second = run_inference(cfg, store, [inbox])
    index = (store / "index.html").read_text()
    # Newest first by id: two inferences within one second are ordered by their ids' random tails.
    links = [f'href="inference/{f.name}/review.html"' for f in sorted((first, second), key=lambda f: f.name,
                                                                       reverse=True)]
    assert all(link in index for link in links) and index.index(links[0]) < index.index(links[1])
    row = index[index.index(f">{second.name}<"):index.index(f'href="inference/{second.name}/review.html"')]
    assert [int(n) for n in re.findall(r"<td>(\d+)</td>", row)] == [25, 1, 24, 2]  # scored, queued, known, bad
