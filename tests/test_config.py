import pytest

from pipeline.config import ConfigError, load_config


def test_defaults_load_and_name_the_best_preset():
    cfg = load_config()
    assert cfg.train.preset == "best"
    assert cfg.preprocess.validation_fraction == 0.1
    assert cfg.ingest.manual_dir == ""  # no flag: TFDS downloads as usual


def test_overrides_are_typed_and_applied_in_order():
    cfg = load_config(["train.epochs=3", "train.epochs=4", "ingest.train_split=train[:10%]",
                       "preprocess.pipeline_options=[--direct_num_workers=2]"])
    assert cfg.train.epochs == 4
    assert cfg.ingest.train_split == "train[:10%]"
    assert cfg.preprocess.pipeline_options == ["--direct_num_workers=2"]


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.epochs=0", ["train.epochs=0", "greater than or equal to 1"]),
        ("preprocess.validation_fraction=1.5", ["preprocess.validation_fraction=1.5", "less than 1"]),
        ("train.preset=resnet", ["unknown preset 'resnet'", "seed-004", "best"]),
        ("train.optimizer=adagrad", ["train.optimizer='adagrad'"]),
        ("train.precision=float16", ["train.precision='float16'", "mixed_bfloat16"]),
        ("train.epoch=3", ["unknown configuration key 'train.epoch'", "epochs"]),
        ("nosuch.key=1", ["unknown configuration key 'nosuch.key'"]),
        ("train.epochs", ["not KEY=VALUE"]),
        # Refused before anything runs, not at train time after ingest and preprocess:
        ("seed=-1", ["seed=-1", "greater than or equal to 0"]),
        ("train.stop=threshold", ["train.stop=threshold needs train.threshold"]),
        ("train.monitor=<img src=x onerror=alert(1)>", ["train.monitor", "should match pattern"]),
        # A plain folder name: `..` pushed to <artifacts>/1, `.` into the serving root itself
        ("export.model_name=..", ["export.model_name='..'"]),
        ("export.model_name=.", ["export.model_name='.'"]),
        ("export.model_name=a/b", ["export.model_name='a/b'"]),
    ],
)
def test_bad_values_get_one_line_naming_key_and_fix(override, words):
    with pytest.raises(ConfigError) as err:
        load_config([override])
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_a_relative_serving_root_is_under_the_artifacts_root_wherever_the_command_runs(tmp_path, monkeypatch):
    from pipeline.runner import model_base

    monkeypatch.chdir(tmp_path)
    assert model_base(load_config(["export.serving_root=served"]), tmp_path / "art") == tmp_path / "art" / "served" / "mnist"
    assert model_base(load_config([f"export.serving_root={tmp_path / 'abs'}"]), "art") == tmp_path / "abs" / "mnist"
    assert model_base(load_config(), "art") == tmp_path.joinpath("art", "serving", "mnist").relative_to(tmp_path)
