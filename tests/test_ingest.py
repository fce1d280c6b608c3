import json

import numpy as np
import pytest

from components.ingest import MirrorError, ingest, read_examples


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
