"""The documentation stays true: the site builds strictly, every link and anchor resolves,
the configuration and command references match the code, and the README's commands run.

No TensorFlow in this process: the commands run in subprocesses, as a user types them."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, small_overrides

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 250

FENCED = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
EXTERNAL = ("http://", "https://", "mailto:")


def _prose(text: str) -> str:
    """Markdown without its code: a link or heading inside code is no link or heading."""
    return INLINE_CODE.sub("", FENCED.sub("", text))


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and mkdocs' toc make it: lowercase, punctuation other than
    `-` and `_` removed, each space a `-`."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> list[str]:
    return [slug(h) for h in HEADING.findall(FENCED.sub("", page.read_text()))]


def test_the_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's notice of its successor
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"mkdocs build --strict failed (pip install -e '.[docs]'):\n{done.stderr[-4000:]}"
    assert (site / "index.html").is_file() and (site / "configuration" / "index.html").is_file()


def test_every_page_is_in_the_site_nav():
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    listed = {page for entry in nav for page in entry.values()}
    assert listed == {p.name for p in DOCS.glob("*.md")}


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        slugs = anchors(page)
        duplicated = {s for s in slugs if slugs.count(s) > 1}
        if duplicated:  # GitHub and mkdocs number repeated headings differently
            broken.append(f"{page.relative_to(REPO)}: headings repeated: {sorted(duplicated)}")
        for target in LINK.findall(_prose(page.read_text())):
            if target.startswith(EXTERNAL):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: ({target})"
            if path.startswith("/"):
                broken.append(f"{where}: an absolute path; link relative to the page")
            elif not resolved.exists():
                broken.append(f"{where}: no file {resolved}")
            elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
                broken.append(f"{where}: no heading with the anchor #{anchor}")
    assert not broken, "\n".join(broken)


def test_the_readme_stays_a_front_door():
    lines = len(README.read_text().splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        flat.update(_flatten(value, f"{dotted}.") if isinstance(value, dict) else {dotted: value})
    return flat


def test_the_configuration_reference_lists_every_key_with_its_default():
    defaults = _flatten(yaml.safe_load((REPO / "pipeline" / "defaults.yaml").read_text()))
    # A row of the reference: | `dotted.key` | `default as YAML` | meaning |
    rows = dict(re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", (DOCS / "configuration.md").read_text(), re.M))
    missing, unknown = sorted(defaults.keys() - rows.keys()), sorted(rows.keys() - defaults.keys())
    assert not missing and not unknown, (f"docs/configuration.md lacks {missing} and lists {unknown}, "
                                         f"which pipeline/defaults.yaml does not have")
    wrong = {key: (rows[key], defaults[key]) for key in defaults if yaml.safe_load(rows[key]) != defaults[key]}
    assert not wrong, f"defaults in docs/configuration.md differ from pipeline/defaults.yaml: {wrong}"


def _parser_and_commands():
    """The command line's parser and its sub-commands' action."""
    import argparse

    from pipeline.__main__ import _parser  # argparse and the step names; no TensorFlow

    parser = _parser()
    return parser, next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _help_texts() -> dict[str, str]:
    """Every help text of the command line, by where it is: `run`, `run --no-cache`, ..."""
    import argparse

    parser, commands = _parser_and_commands()
    texts = {" ".join(a.option_strings): a.help for a in parser._actions
             if a.help and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))}
    for choice in commands._choices_actions:
        texts[choice.dest] = choice.help
        for action in commands.choices[choice.dest]._actions:
            if action.help and action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                texts[f"{choice.dest} {' '.join(action.option_strings) or action.dest}"] = action.help
    return texts


def _make_targets() -> dict[str, str]:
    """What `make help` prints: each target's `## ` comment."""
    return dict(re.findall(r"^([a-z-]+):.*?## (.*)$", (REPO / "Makefile").read_text(), re.M))


def test_the_command_reference_quotes_every_help_text():
    reference = (DOCS / "commands.md").read_text()
    missing = {where: text for where, text in {**_help_texts(), **{f"make {t}": d for t, d in _make_targets().items()}}.items()
               if text not in reference}
    assert not missing, f"docs/commands.md lacks these help texts, word for word: {json.dumps(missing, indent=1)}"


# --- the README's commands, run ----------------------------------------------------------

COMMAND = re.compile(r"^(?:\.venv/bin/)?python -m pipeline (.+)$")
TENSORBOARD = re.compile(r"^tensorboard --logdir (\S+)")
CHANGES_STATE = ("rollback", "gc")  # last, after every command that reads the served versions


def _readme_lines() -> list[str]:
    """Every line of the README's ```bash blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", README.read_text(), re.M | re.S):
        lines += [line.strip() for line in block.replace("\\\n", " ").splitlines()]
    return lines


def _words(command: str) -> list[str]:
    """A command line as the shell splits it, its trailing comment left out."""
    return shlex.split(command, comments=True)


def _digit_png(path: Path) -> Path:
    """A 7 in dark ink on white paper, as a phone photographs one."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (60, 80), 255)
    ImageDraw.Draw(image).line([(15, 10), (45, 10), (25, 70)], fill=0, width=7)
    image.save(path)
    return path


def _pipeline(artifacts: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "--artifacts", str(artifacts), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_readme_commands_run(tmp_path, tfds_dir):
    """Each `python -m pipeline ...` line of the README, as written, on a slice of MNIST: `run`
    and `nightly` first (they make the runs and versions the others read), `rollback` and `gc`
    last. Placeholders get real values: a run id, a picture, an inbox. `schedule --install`
    would write the user's crontab: `--print` stands in for it."""
    lines = _readme_lines()
    commands = [m.group(1) for m in map(COMMAND.match, lines) if m]
    every = set(_parser_and_commands()[1].choices)
    assert {_words(c)[0] for c in commands} == every, \
        f"the README shows no example of: {sorted(every - {_words(c)[0] for c in commands})}"

    artifacts, inbox = tmp_path / "artifacts", tmp_path / "inbox"
    inbox.mkdir()
    image = _digit_png(tmp_path / "digit.png")
    _digit_png(inbox / "from-a-user.png")
    small = small_overrides(tfds_dir, **{"train.epochs": 1})
    # The nightly trains a second model and pushes it whatever it scores, so that `rollback`
    # has a version to go back to.
    second = small_overrides(tfds_dir, **{"train.epochs": 2, "evaluate.accuracy_tolerance": 1,
                                                   "evaluate.max_recall_drop": 1})
    settings = {"run": small, "nightly": second}

    def order(command: str) -> int:
        name = _words(command)[0]
        return 0 if name == "run" else 1 if name == "nightly" else 3 if name in CHANGES_STATE else 2

    failures, run_id = [], None
    for command in sorted(commands, key=order):  # sorted() is stable: README order within a phase
        if order(command) == 2 and run_id is None:
            assert not failures, "README commands that fail:\n" + "\n".join(failures)  # nothing to read yet
            runs = _pipeline(artifacts, ["runs", "--json"])
            assert runs.returncode == 0, runs.stderr
            run_id = json.loads(runs.stdout)[0]["run"]  # the first run: every step of it ran
        args = _words(command.replace("<run id>", run_id or "<run id>"))
        args = [str(image) if a.endswith((".png", ".jpg")) else str(inbox) if a.rstrip("/") == "inbox" else a
                for a in args]
        if args[0] == "schedule" and "--install" in args:
            at = args.index("--install")
            args[at:at + 2] = ["--print"]
        if "-o" in args:  # a DAG file or a pipeline: written into the test's folder, not the checkout
            at = args.index("-o") + 1
            args[at] = str(tmp_path / Path(args[at]).name)
        for assignment in settings.get(args[0], []):
            args += ["--set", assignment]
        done = _pipeline(artifacts, args)
        if done.returncode != 0:
            failures.append(f"python -m pipeline {command}\n  exit {done.returncode}: {done.stderr.strip()[-1500:]}")
        elif args[0] == "predict" and not re.search(r": \d \(p=[01]\.\d+\)$", done.stdout.strip()):
            failures.append(f"python -m pipeline {command}\n  printed no digit: {done.stdout!r}")
    assert not failures, "README commands that fail:\n" + "\n".join(failures)

    for logdir in (m.group(1) for m in (TENSORBOARD.match(line.replace("<run id>", run_id)) for line in lines) if m):
        folder = artifacts / Path(logdir).relative_to("artifacts")
        assert folder.is_dir() and any(folder.iterdir()), f"no TensorBoard logs where the README says: {logdir}"
