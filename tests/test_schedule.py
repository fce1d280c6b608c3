"""The nightly schedule as cron and systemd see it: this checkout's paths, a run missed while off still runs."""
import sys

import pytest

from conftest import REPO
from pipeline import schedule


def test_crontab_line_and_systemd_units_run_this_checkouts_nightly(tmp_path):
    files = schedule.schedule_files(REPO, tmp_path / "art", at="03:05", overrides=["ingest.train_split=train[:10%]"])
    command = f"{sys.executable} -m pipeline --artifacts {tmp_path / 'art'} nightly --set 'ingest.train_split=train[:10%]'"
    cron = files["crontab"]
    assert cron.startswith(f"5 3 * * * cd {REPO} && ")
    assert command.replace("%", r"\%") in cron  # a bare % would end cron's command
    assert f">> {tmp_path / 'art' / 'nightly.log'} 2>&1" in cron
    service, timer = files[f"{schedule.UNIT}.service"], files[f"{schedule.UNIT}.timer"]
    # systemd reads %x as a specifier: a literal % is %%
    assert f"WorkingDirectory={REPO}\n" in service and f"ExecStart={command.replace('%', '%%')}\n" in service
    assert "OnCalendar=*-*-* 03:05:00\n" in timer and "Persistent=true\n" in timer


def test_install_systemd_writes_the_user_units(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    files = schedule.schedule_files(REPO, tmp_path / "art")
    where = schedule.install_systemd(files)
    units = tmp_path / "systemd" / "user"
    assert where == str(units)
    assert sorted(p.name for p in units.iterdir()) == [f"{schedule.UNIT}.service", f"{schedule.UNIT}.timer"]
    assert (units / f"{schedule.UNIT}.timer").read_text() == files[f"{schedule.UNIT}.timer"]


def test_install_cron_replaces_this_checkouts_entry_and_keeps_the_others(tmp_path, monkeypatch):
    # A stand-in `crontab` that keeps the table in a file, as the real one keeps it in the spool.
    table, fake = tmp_path / "table", tmp_path / "bin" / "crontab"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nif [ "$1" = -l ]; then cat {table} 2>/dev/null || exit 1; else cat > {table}; fi\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    table.write_text("0 1 * * * backup.sh\n")
    for at in ("02:30", "04:00"):
        schedule.install_cron(schedule.schedule_files(REPO, tmp_path / "art", at=at)["crontab"], REPO)
    lines = table.read_text().splitlines()
    assert lines[0] == "0 1 * * * backup.sh" and len(lines) == 2 and lines[1].startswith("0 4 * * * ")


def test_a_bad_time_is_refused():
    with pytest.raises(ValueError, match="write HH:MM"):
        schedule.schedule_files(REPO, "art", at="25:00")


def test_hostile_checkout_paths_are_escaped_for_cron_and_systemd_or_refused(tmp_path):
    repo = tmp_path / "my%h $(touch pwned) checkout"
    files = schedule.schedule_files(repo, repo / "art")
    cron = files["crontab"]
    assert "%" not in cron.replace(r"\%", "")  # every % escaped: cron would cut the command there
    assert cron.count("\n") == 1 and cron.endswith("\n")
    assert f"cd '{str(repo).replace('%', chr(92) + '%')}' && " in cron  # one quoted word for the shell
    service = files[f"{schedule.UNIT}.service"]
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    assert "%%h" in exec_start and "%h" not in exec_start.replace("%%h", "")  # no specifier left to expand
    assert "$$(touch" in exec_start  # systemd expands $NAME in ExecStart; $$ is a literal $
    assert f"WorkingDirectory={str(repo).replace('%', '%%')}\n" in service
    for bad in (tmp_path / "evil\n* * * * * rm -rf ~", tmp_path / "back\\slash"):
        with pytest.raises(ValueError, match="cannot schedule"):
            schedule.schedule_files(bad, tmp_path / "art")
    with pytest.raises(ValueError, match="cannot schedule"):
        schedule.schedule_files(REPO, tmp_path / "art", overrides=["ingest.extra_dir=/x\n0 * * * * sh"])


def test_settings_are_validated_before_a_schedule_is_written(tmp_path, capsys):
    from pipeline.__main__ import main

    assert main(["--artifacts", str(tmp_path / "art"), "schedule", "--print", "--set", "bogus.key=1"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "error: unknown configuration key 'bogus.key': bogus is not a section"
    config = tmp_path / "night.yaml"
    config.write_text("train:\n  epochs: 3\n")
    assert main(["--artifacts", str(tmp_path / "art"), "schedule", "--print", "--config", str(config)]) == 0
    assert f"nightly --config {config}" in capsys.readouterr().out  # the file is read each night
