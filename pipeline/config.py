"""The one pipeline configuration: defaults from `defaults.yaml`, `--set` overrides, validation."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.training.distribute import STRATEGIES  # no TensorFlow: it is imported only when a strategy is made

DEFAULTS = Path(__file__).with_name("defaults.yaml")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Ingest(_Section):
    dataset: Literal["mnist"]
    manual_dir: str
    data_dir: str
    train_split: str = Field(min_length=1)
    test_split: str = Field(min_length=1)
    extra_dir: str = ""
    extra_holdout: float = Field(default=0.0, ge=0.0, le=1.0)


class Preprocess(_Section):
    validation_fraction: float = Field(gt=0.0, lt=1.0)
    runner: str = Field(min_length=1)
    pipeline_options: list[str]
    num_shards: int = Field(ge=0, le=256)


class Train(_Section):
    preset: str
    epochs: Optional[int] = Field(default=None, ge=1)
    batch_size: Optional[int] = Field(default=None, ge=1)
    optimizer: Optional[Literal["adam", "rmsprop", "sgd"]] = None
    learning_rate: Optional[float] = Field(default=None, gt=0.0)
    stop: Optional[Literal["threshold", "early_stopping", "none"]] = None
    # A metric's name as Keras logs it (accuracy, val_loss, ...): it reaches logs and reports.
    monitor: Optional[str] = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    threshold: Optional[float] = None
    patience: Optional[int] = Field(default=None, ge=0)
    precision: Optional[Literal["auto", "float32", "mixed_bfloat16"]] = None
    strategy: Literal[STRATEGIES]
    shuffle_buffer: int = Field(ge=1)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        from components.training.presets import PRESETS

        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return name

    @model_validator(mode="after")
    def _settings_complete(self) -> "Train":
        """The preset with these overrides must be trainable (a threshold for stop=threshold, ...),
        checked now rather than after ingest and preprocess have run."""
        from dataclasses import fields

        from components.training.presets import Preset, resolve_settings

        resolve_settings(self.preset, **{f.name: getattr(self, f.name) for f in fields(Preset) if hasattr(self, f.name)})
        return self


class Distances(_Section):
    classes: float = Field(ge=0.0, le=1.0)  # L-infinity between class distributions
    pixels: float = Field(ge=0.0, le=1.0)  # Jensen-Shannon distance between pixel histograms
    pixel_mean: float = Field(ge=0.0)
    pixel_std: float = Field(ge=0.0)


class Validation(_Section):
    max_invalid: int = Field(ge=0)
    min_examples: int = Field(ge=1)
    max_class_imbalance: float = Field(ge=0.0, le=1.0)
    skew: Distances
    drift: Distances
    warn_only: list[str]

    @field_validator("warn_only")
    @classmethod
    def _known_checks(cls, names: list[str]) -> list[str]:
        from components.validate import CHECKS  # NumPy and SciPy only, no TensorFlow

        unknown = [n for n in names if n not in CHECKS]
        if unknown:
            raise ValueError(f"unknown check {unknown[0]!r}; checks are {', '.join(CHECKS)}")
        return names


class SliceGate(_Section):
    min_accuracy: float = Field(ge=0.0, le=1.0)
    max_accuracy_drop: float = Field(ge=0.0, le=1.0)  # against the served model on the same images
    min_count: int = Field(ge=0)  # fewer images: the slice's gates only warn


class Slices(_Section):
    users: SliceGate


class Evaluate(_Section):
    min_accuracy: float = Field(ge=0.0, le=1.0)
    accuracy_tolerance: float = Field(ge=0.0, le=1.0)
    max_recall_drop: float = Field(ge=0.0, le=1.0)
    significance: float = Field(gt=0.0, le=1.0)  # 1: every drop past its tolerance refuses, as a point estimate
    slices: Slices


class Export(_Section):
    serving_root: str  # relative: under the artifacts root
    # One plain folder name: `..` or `.` would push outside the serving root, or into it.
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    verify_examples: int = Field(ge=1)
    # Infra validation (components/serving/infra_validator.py): a clean process loads what will be pushed.
    infra_load_timeout_s: float = Field(gt=0.0, le=3600.0)
    infra_tries: int = Field(ge=1, le=10)
    infra_latency_requests: int = Field(ge=1, le=10000)


class Smtp(_Section):
    host: str  # "" = no mail
    port: int = Field(ge=1, le=65535)
    sender: str
    recipients: list[str]
    starttls: bool

    @model_validator(mode="after")
    def _complete(self) -> "Smtp":
        for value in (self.host, self.sender, *self.recipients):
            if any(ord(c) < 32 or ord(c) == 127 for c in value):  # a header or command of its own
                raise ValueError(f"notify.smtp value {value!r} holds a newline or a control character")
        if self.host:
            if "@" not in self.sender:
                raise ValueError("notify.smtp.sender must be a mail address when notify.smtp.host is set")
            if not self.recipients or any("@" not in r for r in self.recipients):
                raise ValueError("notify.smtp.recipients must list mail addresses when notify.smtp.host is set")
        return self


class Notify(_Section):
    on: Literal["failure", "push", "always"]
    webhook: str  # "" = none (or MNIST_PIPELINE_WEBHOOK_URL, read by pipeline/notify.py)
    timeout_s: float = Field(gt=0.0, le=300.0)
    smtp: Smtp

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, url: str) -> str:
        from pipeline.notify import url_problem

        problem = url_problem(url) if url else None
        if problem:
            raise ValueError(problem)
        return url


class Infer(_Section):
    review_below: float = Field(ge=0.0, le=1.0)
    batch_size: int = Field(ge=1, le=65536)


class Nightly(_Section):
    infer_dir: str  # "" = none
    at: str  # HH:MM, the time of day `schedule` and the Airflow nightly DAG run it

    @field_validator("at")
    @classmethod
    def _time_of_day(cls, at: str) -> str:
        hour, sep, minute = at.partition(":")
        if not (sep and hour.isdigit() and minute.isdigit() and len(minute) == 2 and int(hour) < 24 and int(minute) < 60):
            raise ValueError("not a time of day; write HH:MM, e.g. 02:30")
        return f"{int(hour):02d}:{minute}"


class Retention(_Section):
    keep_runs: int = Field(ge=1)
    keep_versions: int = Field(ge=1)


class Config(_Section):
    seed: int = Field(ge=0, le=2**32 - 1)  # what Keras' set_random_seed accepts
    ingest: Ingest
    preprocess: Preprocess
    validation: Validation
    train: Train
    evaluate: Evaluate
    export: Export
    infer: Infer
    nightly: Nightly
    retention: Retention
    notify: Notify


MAX_VALUE_CHARS = 4096  # a --set value, and any string in the configuration (PATH_MAX is 4096)
MAX_FILE_BYTES = 1 << 20  # a configuration file
SHOWN_CHARS = 60  # of a value quoted in an error line


def quoted(value) -> str:
    """A value as an error line quotes it: repr, cut to its first characters."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


class _NoAliases(yaml.SafeLoader):
    """YAML without aliases: `*name` repeats an anchored node, and nine nested repeats of nine
    make a 377-byte value 9**9 strings (YAML's billion laughs). A configuration has no use for
    them; refused while composing, before anything is expanded."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise ConfigError(f"YAML aliases (*{self.peek_event().anchor}) are not accepted in the configuration; "
                              f"write the value out")
        return super().compose_node(parent, index)


def parse_yaml(text: str, where: str):
    """`text` (a --set value or a file) read as YAML, bounded; raises yaml.YAMLError for text
    that is not YAML and ConfigError for YAML the configuration refuses."""
    try:
        return yaml.load(text, Loader=_NoAliases)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a configuration value") from None


def _check_sizes(tree, where: str) -> None:
    """Every string (keys too) at most MAX_VALUE_CHARS: run.json, logs and pages carry them."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            _check_sizes(key, where)
            _check_sizes(value, f"{where}.{key}" if where else str(key))
    elif isinstance(tree, list):
        for value in tree:
            _check_sizes(value, where)
    elif isinstance(tree, str) and len(tree) > MAX_VALUE_CHARS:
        raise ConfigError(f"configuration value {where or '(top)'} has {len(tree)} characters, at most "
                          f"{MAX_VALUE_CHARS} are accepted: {quoted(tree)}")


def _apply_override(tree: dict, assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {quoted(assignment)} is not KEY=VALUE; write e.g. --set train.epochs=3")
    if len(raw) > MAX_VALUE_CHARS:
        raise ConfigError(f"--set {quoted(key)}: the value has {len(raw)} characters, at most {MAX_VALUE_CHARS} "
                          f"are accepted")
    *parents, leaf = key.split(".")
    node = tree
    for i, part in enumerate(parents):
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ConfigError(f"unknown configuration key {quoted(key)}: {'.'.join(parents[: i + 1])} is not a section")
    if leaf not in node:
        choices = ", ".join(sorted(node))
        raise ConfigError(f"unknown configuration key {quoted(key)}; keys here are: {choices}")
    try:
        node[leaf] = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
    except yaml.YAMLError:
        node[leaf] = raw  # not YAML: keep the literal string (e.g. a split like train[:10%)


def _layer(tree: dict, layer: dict, where: str, path: str = "") -> None:
    """`layer` (a configuration file's tree) over `tree`, key by key: a key the defaults do
    not have is refused as --set refuses it."""
    for key, value in layer.items():
        dotted = f"{path}{key}"
        if not isinstance(key, str) or key not in tree:
            raise ConfigError(f"{where}: unknown configuration key {quoted(dotted)}; keys here are: "
                              f"{', '.join(sorted(tree))}")
        if isinstance(tree[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {dotted} is a section; give its keys under it")
            _layer(tree[key], value, where, f"{dotted}.")
        else:
            tree[key] = value


def read_config_file(path: Path) -> dict:
    """A configuration file in the shape of defaults.yaml, bounded before it is read."""
    path = Path(path)
    try:
        if str(path) == "-":  # an orchestrator's task: the file's content, never a path on another machine
            data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        elif not path.is_file():
            raise ConfigError(f"--config {path}: no such file")
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"--config {path}: {err.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"--config {path}: larger than {MAX_FILE_BYTES} bytes; a configuration is a few hundred")
    try:
        tree = parse_yaml(data.decode("utf-8"), f"--config {path}")
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {path} is not YAML text ({quoted(str(err).splitlines()[0])})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"--config {path}: a configuration is a mapping of sections, like defaults.yaml")
    return tree


def load_config(overrides: list[str] = (), config_file: Path | None = None, defaults: Path = DEFAULTS) -> Config:
    """Defaults, then the configuration file (if any), then each `KEY=VALUE` override in order,
    validated as a whole. What the fingerprints see is the values, wherever they came from."""
    tree = parse_yaml(defaults.read_text(), defaults.name)
    if config_file:
        _layer(tree, read_config_file(config_file), f"--config {config_file}")
    for assignment in overrides:
        _apply_override(tree, assignment)
    _check_sizes(tree, "")
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        value = first.get("input")
        message = first["msg"].removeprefix("Value error, ")
        message = message if len(message) <= 200 else f"{message[:200]}..."  # it may quote the value
        if isinstance(value, dict):  # a check across a section's keys: its message names them
            raise ConfigError(f"invalid configuration {key}: {message}") from None
        raise ConfigError(
            f"invalid configuration {key}={quoted(value)}: {message}; fix it in "
            f"{Path(config_file).name if config_file else defaults.name} or with --set {key}=..."
        ) from None
