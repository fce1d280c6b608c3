import errno
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.training.models import SplitBatch, build, compiled_model
from conftest import REPO
from components.ingest import ingest
from components.preprocess import preprocess
from components.train import train
from components.training.callbacks import StopAtThreshold, stop_callback
from components.training.presets import PRESETS
from components.training.presets import resolve_settings
from components.training.training_data import STEPS_PER_EXECUTION, batches, epoch_steps, read_split, steps_per_execution

LAYERS = {  # the layer types each seed describes, in order (Input not counted)
    "seed-000": ["Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"],
    "seed-002": ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dense", "Dense"],
    "seed-003": ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten",
                 "Dense", "Dense", "Dense"],
    "seed-004": ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "BatchNormalization", "Flatten", "Dense",
                 "Dropout", "Dense", "Dropout", "Dense"],
}
UNITS = {"seed-000": [128, 10], "seed-002": [64, 10], "seed-003": [64, 128, 10], "seed-004": [256, 64, 10]}
FILTERS = {"seed-000": [32], "seed-002": [32, 64, 64], "seed-003": [32, 64, 128], "seed-004": [32, 64]}


@pytest.mark.parametrize("name", list(LAYERS))
def test_seed_presets_have_the_described_layers(name):
    net = build(PRESETS[name].architecture)
    assert [type(l).__name__ for l in net.layers] == LAYERS[name]
    assert [l.units for l in net.layers if isinstance(l, keras.layers.Dense)] == UNITS[name]
    assert [l.filters for l in net.layers if isinstance(l, keras.layers.Conv2D)] == FILTERS[name]
    assert net.layers[-1].activation.__name__ == "softmax"


def test_best_zooms_and_standardises_as_it_serves_and_augments_only_in_training():
    from components.training.models import crop_zoom

    net = build("best")
    kinds = [type(l).__name__ for l in net.layers]
    assert kinds[1:4] == ["CropZoom", "RandomErasing", "PerImageStandardization"]
    assert "BatchNormalization" in kinds and "Dropout" not in kinds
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(net(x, training=False), net(x, training=False))  # inference is deterministic
    zoom, served = net.layers[1], keras.ops.convert_to_numpy(crop_zoom(x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(zoom(x, training=False)), served, atol=1e-6)
    moved = keras.ops.convert_to_numpy(zoom(x, training=True))
    assert not np.allclose(moved, served) and not np.allclose(moved[0] - served[0], moved[1] - served[1])
    assert moved.min() >= 0 and moved.max() <= 1  # bilinear resampling stays within the pixels' range
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(net.layers[2](x, training=False)), x)


def _affine(image, angle=0.0, zoom=1.0, shift_x=0.0, shift_y=0.0):
    from components.training.models import affine

    return keras.ops.convert_to_numpy(affine(image, *(np.float32([v]) for v in (angle, zoom, shift_x, shift_y))))


def test_affine_rotates_zooms_and_shifts_about_the_centre_in_one_resampling():
    image = np.zeros((1, 7, 7, 1), np.float32)
    image[0, 1, 2, 0], image[0, 5, 3, 0] = 1.0, 0.5  # (row, column); the centre is (3, 3)
    np.testing.assert_allclose(_affine(image), image, atol=1e-6)
    shifted = np.zeros_like(image)
    shifted[0, 0, 4, 0], shifted[0, 4, 5, 0] = 1.0, 0.5  # 2 pixels right, 1 up
    np.testing.assert_allclose(_affine(image, shift_x=2, shift_y=-1), shifted, atol=1e-6)
    np.testing.assert_allclose(_affine(image, angle=np.pi / 2), np.rot90(image, 1, axes=(1, 2)), atol=1e-5)
    zoomed = np.zeros_like(image)
    zoomed[0, 4, 3, 0] = 0.5  # zoom 2 shrinks: 2 rows below the centre comes to 1; (1, 2) falls between pixels
    np.testing.assert_allclose(_affine(image, zoom=2), zoomed, atol=1e-6)


def test_split_batch_normalises_each_part_by_itself_and_trains_the_one_network():
    norm = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(center=False, scale=False)])
    split = SplitBatch(norm, 2)
    x = np.concatenate([np.zeros((3, 3)), np.full((2, 3), 10.0)]).astype("float32")
    x[:3, 0], x[3:, 0] = [0, 1, 2], [10, 12]  # parts of 3 and 2: the first part takes the odd image
    np.testing.assert_allclose(split(x, training=True), np.concatenate(
        [norm(x[:3], training=True), norm(x[3:], training=True)]), atol=1e-5)
    assert not np.allclose(split(x, training=True), norm(x, training=True))  # not the whole batch's statistics
    one = x[:1]  # fewer images than parts (a split of one image): the empty part's answer is dropped
    np.testing.assert_allclose(split(one, training=True), norm(one, training=True))
    norm.layers[0].moving_mean.assign([5.0, 0.0, 0.0])  # inference: the moving statistics, whatever the parts
    np.testing.assert_allclose(split(x, training=False), norm(x, training=False), atol=1e-6)
    np.testing.assert_allclose(split(one, training=False), norm(one, training=False), atol=1e-6)

    net, trainer = compiled_model(resolve_settings("best"), steps_per_epoch=10)
    assert isinstance(trainer, SplitBatch) and trainer.network is net and trainer.parts == 2
    assert [id(w) for w in trainer.weights] == [id(w) for w in net.weights]  # no weights of its own
    images = np.random.default_rng(0).random((5, 28, 28, 1)).astype("float32")
    before = [w.copy() for w in net.get_weights()]
    trainer.train_on_batch(images, np.arange(5))
    after = net.get_weights()
    assert all(np.isfinite(w).all() for w in after) and any(not np.array_equal(a, b) for a, b in zip(before, after))
    net_only, trainer_only = compiled_model(resolve_settings("seed-004"), steps_per_epoch=10)
    assert trainer_only is net_only  # batch_splits 1: the network trains itself


def test_auto_precision_is_bfloat16_only_where_the_cpu_has_amx(monkeypatch):
    from components.training import models

    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert models.training_policy("auto") == "mixed_bfloat16"
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})  # Zen 4/5: no matrix tiles
    assert models.training_policy("auto") == "float32"
    assert models.training_policy("mixed_bfloat16") == "mixed_bfloat16"  # asked for: as asked
    assert resolve_settings("best").precision == "auto" and resolve_settings("seed-000").precision == "float32"
    monkeypatch.undo()
    assert "fpu" in models.cpu_flags() or not os.path.exists("/proc/cpuinfo")  # read from this machine


def test_a_bfloat16_training_saves_and_serves_a_float32_network(tmp_path, transformed):
    from components.training.models import load

    net = build("best", "mixed_bfloat16")
    conv = next(layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D))
    assert (conv.compute_dtype, conv.kernel.dtype) == ("bfloat16", "float32")  # bfloat16 products, float32 weights
    assert net.layers[-1].compute_dtype == "float32"  # probabilities in float32 under any policy
    assert keras.config.dtype_policy().name == "float32"  # the process's policy untouched

    record = train(transformed, tmp_path / "model", preset="seed-004", epochs=2, precision="mixed_bfloat16")
    assert record["policy"] == "mixed_bfloat16" and record["settings"]["precision"] == "mixed_bfloat16"
    saved = load(tmp_path / "model")
    assert {layer.compute_dtype for layer in saved.layers} == {"float32"}
    right = total = 0  # the float32 copy scores what the bfloat16 network scored on the validation split
    validation, steps = read_split(transformed, "validation", 256)
    for images, labels in validation.take(steps):  # one pass
        right += int((saved.predict_on_batch(images).argmax(axis=1) == labels.numpy()).sum())
        total += len(labels)
    assert right / total == pytest.approx(record["final_metrics"]["val_accuracy"], abs=0.01)
    assert right / total > 0.5


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_outputs_probabilities_and_trains_a_step(name):
    settings = PRESETS[name]
    net = build(settings.architecture)
    net.compile(optimizer=settings.optimizer, metrics=["accuracy"],
                loss="categorical_crossentropy" if settings.one_hot_labels else "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((8, 28, 28, 1)).astype("float32")
    y = np.arange(8) % 10
    if settings.one_hot_labels:
        y = keras.utils.to_categorical(y, 10)
    before = [w.copy() for w in net.get_weights()]
    net.train_on_batch(x, y)
    assert any(not np.array_equal(a, b) for a, b in zip(before, net.get_weights()))
    probabilities = net.predict(x, verbose=0)
    assert probabilities.shape == (8, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_settings_take_overrides_and_refuse_incomplete_stops():
    settings = resolve_settings("seed-000", epochs=3, learning_rate=None)
    assert settings.epochs == 3 and settings.learning_rate == PRESETS["seed-000"].learning_rate
    with pytest.raises(ValueError, match="unknown preset 'x'; choose one of best, resnet, seed-000"):
        resolve_settings("x")
    with pytest.raises(ValueError, match="needs train.threshold"):
        resolve_settings("seed-002", stop="threshold")


def test_stop_callbacks_follow_the_preset():
    seed_000 = stop_callback(resolve_settings("seed-000"))
    assert isinstance(seed_000, StopAtThreshold) and (seed_000.monitor, seed_000.threshold) == ("accuracy", 0.995)
    seed_004 = stop_callback(resolve_settings("seed-004"))
    assert isinstance(seed_004, keras.callbacks.EarlyStopping)
    assert (seed_004.monitor, seed_004.patience, seed_004.restore_best_weights) == ("val_loss", 3, True)
    assert stop_callback(resolve_settings("seed-002")) is None


@pytest.fixture(scope="module")
def transformed(tmp_path_factory, mirror, tfds_dir):
    root = tmp_path_factory.mktemp("small")
    ingest(root / "examples", train_split="train[:1500]", test_split="test[:100]", manual_dir=mirror, data_dir=tfds_dir)
    preprocess(root / "examples", root / "transformed")
    return root / "transformed"


def test_threshold_callback_stops_training_and_says_why(tmp_path, transformed):
    record = train(transformed, tmp_path / "model", preset="seed-000", epochs=5, threshold=0.5)
    assert record["epochs_run"] == 1
    assert record["stop_reason"].startswith("threshold: accuracy")
    assert "reached threshold 0.5 at epoch 1" in record["stop_reason"]
    history = json.loads((tmp_path / "model" / "history.json").read_text())
    assert len(history["accuracy"]) == 1 and history["accuracy"][0] >= 0.5
    assert list((tmp_path / "model" / "logs").rglob("events.out.tfevents.*"))  # TensorBoard wrote
    assert keras.models.load_model(tmp_path / "model" / "model.keras").output_shape == (None, 10)


def test_epoch_cap_and_one_hot_preset(tmp_path, transformed):
    record = train(transformed, tmp_path / "model", preset="seed-002", epochs=2)
    assert record["epochs_run"] == 2
    assert record["stop_reason"] == "epoch cap: ran all 2 of 2 epoch(s)"
    assert record["settings"]["one_hot_labels"] is True


def test_unknown_monitor_is_a_clear_error(tmp_path, transformed):
    with pytest.raises(ValueError, match="train.monitor 'nope' is not a logged metric; choose one of accuracy"):
        train(transformed, tmp_path / "model", preset="seed-000", epochs=1, monitor="nope")


def test_training_is_reproducible_with_a_fixed_seed(tmp_path, transformed):
    a = train(transformed, tmp_path / "a", preset="best", epochs=1, seed=7)
    b = train(transformed, tmp_path / "b", preset="best", epochs=1, seed=7)
    assert a["final_metrics"] == b["final_metrics"]
    c = train(transformed, tmp_path / "c", preset="best", epochs=1, seed=8)
    assert c["final_metrics"] != a["final_metrics"]


def test_shards_stream_every_example_once_per_epoch_through_a_small_buffer(tmp_path, transformed):
    relaid = tmp_path / "relaid"  # more shards than the fixture's, and a buffer far smaller than the split
    stats = preprocess(transformed.parent / "examples", relaid, num_shards=5)
    count = stats["train"]["count"]
    everything = next(iter(read_split(relaid, "train", count)[0]))[0].numpy().reshape(count, -1)
    dataset, steps = read_split(relaid, "train", 128, shuffle_seed=1, shuffle_buffer=64)
    epochs = [np.concatenate([batch.numpy().reshape(len(batch), -1) for batch, _ in dataset.take(steps)])
              for dataset in (dataset.skip(0 * steps), dataset.skip(1 * steps))]
    for seen in epochs:
        assert seen.shape == everything.shape
        np.testing.assert_array_equal(seen[np.lexsort(seen.T)], everything[np.lexsort(everything.T)])  # each once
    assert not np.array_equal(epochs[0], epochs[1])


def test_early_stopping_ends_training_on_a_plateau(tmp_path, transformed):
    # With a vanishing learning rate (and no BatchNorm statistics to drift) the predictions,
    # and so val_accuracy, cannot improve after the first epoch.
    record = train(transformed, tmp_path / "model", preset="seed-000", epochs=6, optimizer="sgd",
                   learning_rate=1e-12, stop="early_stopping", monitor="val_accuracy", patience=1)
    assert record["epochs_run"] == 2
    assert record["stop_reason"] == (
        "early stopping: val_accuracy did not improve for 1 epoch(s); restored the weights of epoch 1")


def _epochs_of(dataset, steps_per_epoch: int, epochs: int) -> list[np.ndarray]:
    """The labels of `epochs` epochs, read through one iterator as Keras does."""
    iterator = iter(dataset)
    return [np.concatenate([next(iterator)[1].numpy() for _ in range(steps_per_epoch)]) for _ in range(epochs)]


def test_every_example_is_seen_exactly_once_per_epoch_in_a_new_order():
    n = 1001  # 8 batches of at most 128: 125 each and one of 126, not 7 of 128 and one of 105
    images, ids = np.arange(n, dtype=np.float32).reshape(n, 1), np.arange(n)
    examples = tf.data.Dataset.from_tensor_slices((images, ids))
    dataset, steps = batches(examples, n, 128, shuffle_seed=3, shuffle_buffer=100)  # a buffer of a tenth
    assert steps == 8
    epochs = _epochs_of(dataset, steps, 3)
    for seen in epochs:
        np.testing.assert_array_equal(np.sort(seen), ids)  # all of them, none twice
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    again = _epochs_of(batches(examples, n, 128, shuffle_seed=3, shuffle_buffer=100)[0], steps, 3)
    assert all(np.array_equal(a, b) for a, b in zip(epochs, again))  # the seed fixes every epoch's order
    other = _epochs_of(batches(examples, n, 128, shuffle_seed=4, shuffle_buffer=100)[0], steps, 1)
    assert not np.array_equal(other[0], epochs[0])
    sizes = [len(labels) for _, labels in batches(examples, n, 128, shuffle_seed=3)[0].take(2 * steps)]
    assert sizes == 2 * ([126] + [125] * 7)
    in_order = _epochs_of(batches(examples, n, 128)[0], steps, 2)  # validation: unshuffled, whole, repeated
    assert all(np.array_equal(seen, ids) for seen in in_order)


@keras.saving.register_keras_serializable(package="test")
class CountImages(keras.layers.Layer):
    """Counts the images that pass through it, in training and in inference."""

    def build(self, shape):
        self.trained = self.add_weight(shape=(), initializer="zeros", trainable=False, name="trained")
        self.inferred = self.add_weight(shape=(), initializer="zeros", trainable=False, name="inferred")

    def call(self, x, training=False):
        (self.trained if training else self.inferred).assign_add(tf.cast(tf.shape(x)[0], "float32"))
        return x


def test_several_steps_per_call_still_read_one_pass_per_epoch():
    assert steps_per_execution((53_764, 128), (6_236, 1024)) == 7  # full MNIST: 7 validation batches
    assert steps_per_execution((100_000, 32), (50_000, 32)) == STEPS_PER_EXECUTION
    assert steps_per_execution((10, 1), (10, 1)) == 1  # calls of 8 steps would need 16 batches of 10 images
    assert steps_per_execution((5, 128), (3, 64)) == 1  # one batch each: one step per call
    assert epoch_steps(1001, 128, 5) == 10 and epoch_steps(1001, 128) == 8
    n, n_val = 1001, 300
    per_call = steps_per_execution((n, 128), (n_val, 64))
    assert per_call == 5  # 5 validation batches; 10 training batches of about 100, not 8 of 125
    train_ds, steps = batches(tf.data.Dataset.from_tensor_slices((np.zeros((n, 1), "float32"), np.zeros(n))), n, 128,
                              shuffle_seed=1, per_execution=per_call)
    val_ds, val_steps = batches(tf.data.Dataset.from_tensor_slices((np.zeros((n_val, 1), "float32"), np.zeros(n_val))),
                                n_val, 64, per_execution=per_call)
    counter = CountImages()
    model = keras.Sequential([keras.Input((1,)), counter, keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", steps_per_execution=per_call)
    model.fit(train_ds, validation_data=val_ds, epochs=3, steps_per_epoch=steps, validation_steps=val_steps,
              shuffle=False, verbose=0)
    # Keras runs whole calls: had the epoch's steps not been a multiple, it would have read past the epoch.
    assert (float(counter.trained), float(counter.inferred)) == (3 * n, 3 * n_val)


def test_training_killed_mid_way_resumes_after_its_last_finished_epoch(tmp_path, transformed):
    backup = tmp_path / "backup"
    script = (f"from components.train import train; train({str(transformed)!r}, {str(tmp_path / 'killed')!r}, "
              f"preset='seed-000', epochs=8, stop='none', backup_dir={str(backup)!r})")
    temp = tmp_path / "child-temp"  # to see what the killed process leaves behind there
    temp.mkdir()
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.DEVNULL,
                             env={**os.environ, "TMPDIR": str(temp)})
    metadata = backup / "epoch" / "training_metadata.json"
    deadline = time.monotonic() + 120
    while not metadata.is_file() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not list(temp.iterdir())  # nothing for a kill to strand: no temp file is open during training
    done = json.loads(metadata.read_text())["epoch"]
    assert 1 <= done < 8

    record = train(transformed, tmp_path / "model", preset="seed-000", epochs=8, stop="none", backup_dir=backup)
    assert record["resumed_after_epoch"] == done
    assert record["epochs_run"] == 8 and [t["epoch"] for t in record["epoch_timings"]] == list(range(1, 9))
    history = json.loads((tmp_path / "model" / "history.json").read_text())
    assert len(history["accuracy"]) == 8  # the epochs before the kill are reported too
    assert not backup.exists()  # a finished training leaves no backup behind


def test_best_resumes_its_split_batch_training_from_the_backup(tmp_path, transformed, monkeypatch):
    from components.training.callbacks import Backup
    real_end = Backup.on_epoch_end

    def killed_after_the_first_backup(self, epoch, logs=None):
        real_end(self, epoch, logs)
        raise KeyboardInterrupt

    backup = tmp_path / "backup"
    monkeypatch.setattr(Backup, "on_epoch_end", killed_after_the_first_backup)
    with pytest.raises(KeyboardInterrupt):
        train(transformed, tmp_path / "killed", preset="best", epochs=2, backup_dir=backup)
    monkeypatch.undo()
    record = train(transformed, tmp_path / "model", preset="best", epochs=2, backup_dir=backup)
    assert record["resumed_after_epoch"] == 1 and record["epochs_run"] == 2
    saved = keras.models.load_model(tmp_path / "model" / "model.keras")
    assert saved.name == "best" and not isinstance(saved, SplitBatch)  # the network is saved, not its trainer


def test_a_backup_cut_short_by_a_full_disk_is_never_restored(tmp_path, transformed, monkeypatch):
    clean = train(transformed, tmp_path / "clean", preset="seed-000", epochs=2, stop="none")
    real_save = keras.Model.save_weights

    def save_then_run_out_of_space(self, filepath, *args, **kwargs):
        real_save(self, filepath, *args, **kwargs)  # the weights are written, the metadata never is
        raise OSError(errno.ENOSPC, "No space left on device")

    backup = tmp_path / "backup"
    monkeypatch.setattr(keras.Model, "save_weights", save_then_run_out_of_space)
    with pytest.raises(OSError, match="No space left on device"):
        train(transformed, tmp_path / "full", preset="seed-000", epochs=2, stop="none", backup_dir=backup)
    monkeypatch.undo()

    # Keras' own backup then loaded epoch 1's weights with no epoch recorded, and trained two
    # more epochs on top of them: the same inputs made another model. Nothing was committed.
    again = train(transformed, tmp_path / "model", preset="seed-000", epochs=2, stop="none", backup_dir=backup)
    assert again["resumed_after_epoch"] == 0
    assert again["final_metrics"] == clean["final_metrics"]
    assert not backup.exists()  # removed once training finished


def test_resnet_zooms_the_one_centred_crop_in_training_and_serving_and_standardises_each_image():
    from components.training.models import CropZoom, PerImageStandardization, RandomErasing, crop_zoom

    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    still = CropZoom(rotation=0, shift=0)
    served = keras.ops.convert_to_numpy(still(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(still(x, training=True)), served, atol=1e-6)  # one op
    np.testing.assert_allclose(served, keras.ops.convert_to_numpy(crop_zoom(x)), atol=1e-6)
    digit = np.zeros((1, 28, 28, 1), np.float32)
    digit[0, 0, 14, 0] = 1.0  # the top row: outside the centred crop (rows 1.45-25.55 are read), so zoomed away
    assert keras.ops.convert_to_numpy(crop_zoom(digit)).max() == 0.0
    moving = CropZoom(rotation=10 / 360, shift=1.5)
    moved = keras.ops.convert_to_numpy(moving(x, training=True))
    assert not np.allclose(moved, served) and not np.allclose(moved[0] - served[0], moved[1] - served[1])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(moving(x, training=False)), served, atol=1e-6)

    erased = keras.ops.convert_to_numpy(RandomErasing(size=4)(x, training=True))
    assert [int((erased[i] != x[i]).sum()) for i in range(4)] == [16] * 4  # one 4x4 square each
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(RandomErasing(size=4)(x, training=False)), x)

    inks = np.float32([1, 3, 9, 0.5]).reshape(4, 1, 1, 1)  # one image in four strengths of ink
    standard = keras.ops.convert_to_numpy(PerImageStandardization()(x[:1] * inks))
    np.testing.assert_allclose(standard.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(standard.std(axis=(1, 2, 3)), 1, atol=1e-4)
    np.testing.assert_allclose(standard[0], standard[1], atol=1e-4)  # the ink's scale no longer matters
    blank = keras.ops.convert_to_numpy(PerImageStandardization()(np.zeros((1, 28, 28, 1), np.float32)))
    assert np.isfinite(blank).all()


def test_resnet_trains_reproducibly_exports_and_serves_raw_uint8_images(tmp_path, transformed):
    from components.common.transform import scale_pixels
    from components.export import build_saved_model, predict_saved_model
    from components.training.models import load

    a = train(transformed, tmp_path / "a", preset="resnet", epochs=1, seed=7)
    b = train(transformed, tmp_path / "b", preset="resnet", epochs=1, seed=7)
    assert a["final_metrics"] == b["final_metrics"]
    net = load(tmp_path / "a")
    kinds = [type(layer).__name__ for layer in net.layers]
    assert {"CropZoom", "RandomErasing", "PerImageStandardization", "Add", "GlobalAveragePooling2D"} <= set(kinds)
    assert "Dropout" not in kinds and "Flatten" not in kinds
    build_saved_model(net, tmp_path / "saved_model")
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)  # raw, as clients send
    served = predict_saved_model(tmp_path / "saved_model", images)
    np.testing.assert_allclose(served, net.predict(scale_pixels(images), verbose=0), atol=1e-5)
    assert served.shape == (5, 10)
