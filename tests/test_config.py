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
        ("train.preset=vgg", ["unknown preset 'vgg'", "seed-004", "best", "resnet"]),
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


BOMB = "[" + ", ".join(["&a [x,x,x,x,x,x,x,x,x]"] + [f"&{c} [{', '.join(['*' + p] * 9)}]"
                                                     for p, c in zip("abcdefgh", "bcdefghi")]) + "]"


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    import tracemalloc

    assert len(BOMB) < 400  # 9 levels of 9: 9**9 strings once expanded
    config = tmp_path / "night.yaml"
    config.write_text(f"seed: {BOMB}\n")
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as from_set:
            load_config([f"seed={BOMB}"])
        with pytest.raises(ConfigError) as from_file:
            load_config([], config)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 300 * 2**20, peak
    assert str(from_set.value) == "--set seed: YAML aliases (*a) are not accepted in the configuration; write the value out"
    assert str(from_file.value).startswith(f"--config {config}: YAML aliases (*a) are not accepted")


def test_huge_or_deep_values_are_refused_in_one_short_line(tmp_path):
    huge = "x" * 10_000_000
    big_file, long_string = tmp_path / "big.yaml", tmp_path / "long.yaml"
    big_file.write_text(f"ingest:\n  extra_dir: {huge}\n")
    long_string.write_text(f"ingest:\n  extra_dir: {'y' * 5000}\n")
    errors = []
    for assignment in (f"ingest.extra_dir={huge}", "seed=" + "[" * 3000):
        with pytest.raises(ConfigError) as err:
            load_config([assignment])
        errors.append(str(err.value))
    for path in (big_file, long_string):
        with pytest.raises(ConfigError) as err:
            load_config([], path)
        errors.append(str(err.value))
    assert "at most 4096 are accepted" in errors[0] and "nested too deeply" in errors[1]
    assert "larger than 1048576 bytes" in errors[2]
    assert errors[3].startswith("configuration value ingest.extra_dir has 5000 characters, at most 4096")
    assert all(len(e) < 400 and "\n" not in e for e in errors), [len(e) for e in errors]


def test_a_configuration_file_layers_over_the_defaults_and_set_goes_on_top(tmp_path):
    config = tmp_path / "night.yaml"
    config.write_text("train:\n  preset: seed-000\n  epochs: 3\nnotify:\n  smtp:\n    port: 2525\n")
    cfg = load_config(["train.epochs=4"], config)
    assert (cfg.train.preset, cfg.train.epochs, cfg.notify.smtp.port) == ("seed-000", 4, 2525)
    assert cfg.train.batch_size == load_config().train.batch_size  # the rest is the defaults'
    config.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown configuration key 'train.epoch'"):
        load_config([], config)
    config.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train is a section"):
        load_config([], config)
