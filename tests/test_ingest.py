import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.common.digits import load_image, to_mnist
from components.common.records import read_examples
from components.ingest import MirrorError, ingest


def test_ingest_writes_the_requested_slices(tmp_path, mirror, tfds_dir):
    record = ingest(tmp_path / "examples", train_split="train[:300]", test_split="test[:100]",
                    manual_dir=mirror, data_dir=tfds_dir)
    assert record["splits"]["train"] == {"tfds_split": "train[:300]", "count": 300}
    assert record["splits"]["test"]["count"] == 100
    assert record["dataset"] == "mnist" and record["version"] == "3.0.1"
    assert str(mirror.resolve()) in record["source"]
    assert json.loads((tmp_path / "examples" / "ingest.json").read_text()) == record

    images, labels = read_examples(tmp_path / "examples", "train")
    assert images.shape == (300, 28, 28) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    assert set(labels) == set(range(10))


def test_missing_mirror_file_is_named_before_any_download(tmp_path, mirror):
    partial = tmp_path / "mirror"
    partial.mkdir()
    for f in mirror.glob("*.gz"):
        if not f.name.startswith("train-images"):
            (partial / f.name).symlink_to(f)
    with pytest.raises(MirrorError, match=r"mirror file missing: .*train-images-idx3-ubyte\.gz"):
        ingest(tmp_path / "out", manual_dir=partial, data_dir=tmp_path / "tfds")


def test_truncated_mirror_file_is_refused(tmp_path, mirror):
    partial = tmp_path / "mirror"
    partial.mkdir()
    for f in mirror.glob("*.gz"):
        (partial / f.name).symlink_to(f)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    (partial / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(MirrorError, match="t10k-labels-idx1-ubyte.gz has 12 bytes"):
        ingest(tmp_path / "out", manual_dir=partial, data_dir=tmp_path / "tfds")


def test_manual_dir_that_is_not_a_folder(tmp_path):
    with pytest.raises(MirrorError, match="is not a folder"):
        ingest(tmp_path / "out", manual_dir=tmp_path / "nowhere", data_dir=tmp_path / "tfds")


def test_bad_split_string_names_the_key(tmp_path, mirror, tfds_dir):
    with pytest.raises(ValueError, match="ingest.train_split"):
        ingest(tmp_path / "out", train_split="trian[:10]", manual_dir=mirror, data_dir=tfds_dir)


def _extra_folder(root, digits):
    """Corrections as users collect them: bigger, dark on light, as PNG and JPEG; and some junk."""
    (root / "3").mkdir(parents=True)
    (root / "7").mkdir()
    (root / "x").mkdir()
    for (name, digit) in (("3/a.png", digits[0]), ("7/b.jpg", digits[1])):
        Image.fromarray(255 - digit).resize((84, 84)).save(root / name)
    (root / "7" / "notes.txt").write_text("not a picture")
    Image.new("L", (40, 40), 255).save(root / "7" / "blank.png")
    Image.fromarray(255 - digits[0]).save(root / "x" / "c.png")
    Image.fromarray(255 - digits[0]).save(root / "top.png")
    return root


def test_extra_images_join_the_train_split_in_mnist_form_and_bad_files_are_listed(tmp_path, mirror, tfds_dir):
    ingest(tmp_path / "source", train_split="train[:10]", test_split="test[:50]", manual_dir=mirror, data_dir=tfds_dir)
    test_images, test_labels = read_examples(tmp_path / "source", "test")
    digits = [test_images[list(test_labels).index(3)], test_images[list(test_labels).index(7)]]
    extra = _extra_folder(tmp_path / "extra", digits)
    record = ingest(tmp_path / "examples", train_split="train[:100]", test_split="test[:50]", manual_dir=mirror,
                    data_dir=tfds_dir, extra_dir=extra)
    assert record["extra"]["count"] == 2 and record["extra"]["per_digit"]["3"] == record["extra"]["per_digit"]["7"] == 1
    assert record["splits"]["train"] == {"tfds_split": "train[:100]", "count": 102, "base_count": 100}
    reasons = {Path(s["path"]).name: s["reason"] for s in record["extra"]["skipped"]}
    assert set(reasons) == {"notes.txt", "blank.png", "x", "top.png"}
    assert "not an image" in reasons["notes.txt"] and "not a digit" in reasons["x"]
    images, labels = read_examples(tmp_path / "examples", "train")
    assert len(images) == 102 and list(labels[-2:]) == [3, 7]
    np.testing.assert_array_equal(images[-2], to_mnist(load_image(extra / "3" / "a.png")))  # predict's own function
    assert len(read_examples(tmp_path / "examples", "test")[0]) == 50  # never in the test split


def test_extra_images_count_by_content_in_ingests_fingerprint(tmp_path):
    from pipeline.config import load_config
    from pipeline.graph import STEPS

    digit = np.zeros((28, 28), np.uint8)
    digit[8:20, 12:16] = 255
    extra = _extra_folder(tmp_path / "extra", [digit, digit])
    key = lambda: STEPS["ingest"].configure(load_config([f"ingest.extra_dir={extra}"]), None, {})[1]  # noqa: E731
    first = key()
    assert key() == first  # an unchanged folder: a cache hit
    Image.fromarray(255 - digit).save(extra / "3" / "new.png")
    assert key() != first  # a new correction: a new model


def test_mirror_file_of_the_right_size_but_wrong_bytes_is_named_with_the_checksum_expected(tmp_path, mirror):
    partial = tmp_path / "mirror"
    partial.mkdir()
    for f in mirror.glob("*.gz"):
        (partial / f.name).symlink_to(f)
    original = mirror / "t10k-labels-idx1-ubyte.gz"
    (partial / original.name).unlink()
    corrupted = bytearray(original.read_bytes())
    corrupted[100] ^= 0xFF
    (partial / original.name).write_bytes(bytes(corrupted))
    expected = "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    with pytest.raises(MirrorError, match=rf"mirror file {partial / original.name} has sha256 [0-9a-f]{{64}}, "
                                          rf"TFDS expects {expected}"):
        ingest(tmp_path / "out", manual_dir=partial, data_dir=tmp_path / "tfds")


def test_offline_without_a_mirror_fails_at_once_naming_manual_dir(tmp_path, monkeypatch, capsys):
    import socket

    from pipeline.__main__ import main

    def no_network(address, timeout=None):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    status = main(["--artifacts", str(tmp_path / "artifacts"), "run", "ingest",
                   "--set", f"ingest.data_dir={tmp_path / 'tfds'}"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1
    assert error.startswith("error: ingest failed: mnist could not be downloaded: storage.googleapis.com is unreachable")
    assert "MANUAL_DIR=" in error and "ingest.manual_dir" in error
    assert not (tmp_path / "tfds" / "downloads").exists()  # TFDS never started its retries


def test_an_example_has_the_same_bytes_in_every_process():
    """The early cutoff compares outputs made by different processes: a record's bytes must not
    follow the process (a protobuf map's order did, with the hash seed)."""
    import subprocess
    import sys

    from conftest import REPO

    probe = ("import hashlib, sys, numpy as np; from components.common.records import serialize_example, serialize_scaled; "
             "sys.stdout.write(hashlib.sha256(serialize_example(bytes(range(256)) * 3 + bytes(16), 7)"
             " + serialize_scaled((np.linspace(0, 1, 784, dtype=np.float32), 3))).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 3, 5)}
    assert len(digests) == 1 and len(next(iter(digests))) == 64


def test_symbolic_links_in_extra_dir_are_followed_only_inside_it(tmp_path):
    from components.common.digits import labelled_images

    outside, extra = tmp_path / "outside", tmp_path / "extra"
    (outside / "7").mkdir(parents=True)
    (extra / "3").mkdir(parents=True)
    for folder, name in ((outside / "7", "secret.png"), (outside, "loose.png"), (extra / "3", "three.png")):
        Image.new("L", (28, 28)).save(folder / name)
    (extra / "7").symlink_to(outside / "7")  # a digit folder pulling images from elsewhere
    (extra / "3" / "linked.png").symlink_to(outside / "loose.png")  # a file from elsewhere
    (extra / "3" / "again.png").symlink_to(extra / "3" / "three.png")  # inside: followed
    (extra / "5").symlink_to(extra / "3")  # inside: followed, labelled 5
    found, skipped = labelled_images(extra)
    assert sorted((p.relative_to(extra).as_posix(), label) for p, label in found) == [
        ("3/again.png", 3), ("3/three.png", 3), ("5/again.png", 5), ("5/three.png", 5)]
    outside_links = {Path(s["path"]).relative_to(extra).as_posix() for s in skipped
                     if s["reason"] == "a symbolic link to outside the folder (not followed)"}
    assert outside_links == {"7", "3/linked.png", "5/linked.png"}
