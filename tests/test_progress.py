"""Progress a person can watch: bars on a terminal, one timestamped line per event otherwise."""
from __future__ import annotations

import io
import re
import sys


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_training_at_a_terminal_shows_a_bar_with_steps(full_run, tmp_path, monkeypatch):
    from components.train import train

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train(full_run[1] / "preprocess", tmp_path / "model", preset="seed-000", epochs=1)
    shown = terminal.getvalue()
    assert re.search(r"epoch 1/1: +\d+%.*\| *\d+/\d+ \[", shown), shown[-500:]  # steps done/total, then times
    assert "\r" in shown  # redrawn in place


def test_preprocess_at_a_terminal_counts_images(full_run, tmp_path, monkeypatch):
    from components.preprocess import preprocess

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    preprocess(full_run[1] / "ingest", tmp_path / "transformed")
    counts = [int(n) for n in re.findall(r"preprocess \(Beam\):.*?\| *(\d+)/2500 ", terminal.getvalue())]
    assert counts and max(counts) > 0  # images counted out of all 2,500 ingested (redrawn at most 10 times/s)


def test_unattended_run_log_is_one_timestamped_line_per_event(full_run):
    log = (full_run[1] / "run.log").read_text()
    assert "\r" not in log
    lines = log.splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ", line) for line in lines)


def test_the_run_log_says_which_device_trains(full_run):
    import tensorflow as tf

    log = (full_run[1] / "run.log").read_text()
    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "the CPU (no GPU found)"
    assert re.search(rf"INFO components\.train: training on .*{re.escape(device)}", log), log
