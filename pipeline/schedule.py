"""`python -m pipeline schedule`: the nightly retrain as a crontab line or a systemd user timer.

Both run `python -m pipeline nightly` from this checkout with this checkout's Python, so
what the schedule runs is what `make nightly` runs. The systemd timer has
`Persistent=true`: a night missed while the machine was off runs at the next boot.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from jinja2 import Environment, StrictUndefined

UNIT = "mnist-pipeline-nightly"
CRON_MARK = "# mnist-pipeline nightly"

_env = Environment(undefined=StrictUndefined, keep_trailing_newline=True, trim_blocks=True)
_env.filters["q"] = lambda value: shlex.quote(str(value))  # paths with spaces stay one word
CRONTAB = _env.from_string(
    "cd {{ repo | q }} && {{ command }} >> {{ log | q }} 2>&1 {{ mark }} {{ repo }}"
)
SERVICE = _env.from_string("""\
[Unit]
Description=MNIST pipeline: nightly retrain ({{ repo }})

[Service]
Type=oneshot
WorkingDirectory={{ repo }}
ExecStart={{ command }}
# A training night should not slow down whoever is using the machine.
Nice=10
""")
TIMER = _env.from_string("""\
[Unit]
Description=MNIST pipeline: nightly retrain at {{ at }} ({{ repo }})

[Timer]
OnCalendar=*-*-* {{ at }}:00
# A night missed while the machine was off runs at the next start.
Persistent=true
RandomizedDelaySec=5min

[Install]
WantedBy=timers.target
""")


def nightly_command(artifacts: Path, overrides: list[str], config: Path | None = None) -> str:
    args = [sys.executable, "-m", "pipeline", "--artifacts", str(Path(artifacts).resolve()), "nightly"]
    if config:
        args += ["--config", str(Path(config).resolve())]  # read each night: edit the file, not the schedule
    for assignment in overrides:
        args += ["--set", assignment]
    return shlex.join(args)


def _cron(text: str) -> str:
    return text.replace("%", r"\%")  # cron reads a bare % in the command as a newline


def _systemd(text: str) -> str:
    return text.replace("%", "%%")  # systemd reads %x as a specifier (%h: home, %n: unit name, ...)


def schedule_files(repo: Path, artifacts: Path, at: str = "02:30", overrides: list[str] = (),
                   config: Path | None = None) -> dict[str, str]:
    """The crontab line and the systemd service and timer, with this checkout's paths filled in."""
    hour, minute = _parse_time(at)
    repo = Path(repo).resolve()
    log = Path(artifacts).resolve() / "nightly.log"
    _check_writable(repo, log, *overrides, *([Path(config).resolve()] if config else []))
    command = nightly_command(artifacts, list(overrides), config)
    body = CRONTAB.render(repo=repo, command=command, log=log, mark=CRON_MARK)
    return {
        "crontab": f"{minute} {hour} * * * {_cron(body)}\n",
        # ExecStart expands $NAME too; $$ is a literal $.
        f"{UNIT}.service": SERVICE.render(repo=_systemd(str(repo)), command=_systemd(command).replace("$", "$$")),
        f"{UNIT}.timer": TIMER.render(repo=_systemd(str(repo)), at=f"{hour:02d}:{minute:02d}"),
    }


def _check_writable(*values) -> None:
    """A newline (or any control character) would end the crontab line or the unit's setting,
    and what follows it would run as a command of its own; a backslash is an escape to both.
    Refused rather than written."""
    for value in map(str, values):
        if any(ord(c) < 32 or ord(c) == 127 or c == "\\" for c in value):
            raise ValueError(f"cannot schedule {value!r}: it holds a newline, a control character or a backslash, "
                             f"which cron and systemd would not read as written; move the checkout (or the "
                             f"artifacts) to a plain path")


def install_cron(line: str, repo: Path) -> str:
    """Adds `line` to the user's crontab, replacing this checkout's earlier entry."""
    if shutil.which("crontab") is None:
        raise RuntimeError("no crontab command on this machine; install cron, or use --install systemd")
    current = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    mine = _cron(f"{CRON_MARK} {Path(repo).resolve()}")
    kept = [l for l in current.stdout.splitlines() if not l.endswith(mine)] if current.returncode == 0 else []
    subprocess.run(["crontab", "-"], input="\n".join([*kept, line.rstrip("\n")]) + "\n", text=True, check=True)
    return "user crontab"


def install_systemd(files: dict[str, str]) -> str:
    """Writes the user units; enabling them is one systemctl command, printed for the operator."""
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    units = config / "systemd" / "user"
    units.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if name != "crontab":
            (units / name).write_text(text)
    return str(units)


def _parse_time(at: str) -> tuple[int, int]:
    hour, sep, minute = at.partition(":")
    if not (sep and hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
        raise ValueError(f"--at {at!r} is not a time of day; write HH:MM, e.g. --at 02:30")
    return int(hour), int(minute)
