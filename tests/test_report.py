"""The run report and the index: built from a real slice run, self-contained, every picture a PNG."""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys

import pytest
from PIL import Image

from pipeline.report import build_report
from tests.conftest import REPO

SECTIONS = ("statistics", "validation", "training", "test-metrics", "classification-report", "confusion-matrix",
            "misclassified", "blessing", "lineage")


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_report_of_a_real_run_has_every_section_and_only_embedded_pngs(full_run):
    root, run_dir, _ = full_run
    html = (run_dir / "report.html").read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in html, section
    accuracy = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["accuracy"]
    assert f"{accuracy:.4f}" in html
    assert "Not evaluated" not in html and "No model was trained" not in html
    images = _images(html)
    assert len(images) == 6  # class and pixel distributions, curves, two confusion matrices, worst mistakes
    for data in images:
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        Image.open(io.BytesIO(data)).verify()
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched: opens from disk, offline
    assert sorted(p.name for p in (run_dir / "report").iterdir()) == sorted(
        ["class_distribution.png", "pixel_distribution.png", "training_curves.png", "confusion_matrix.png",
         "confusion_matrix_errors.png", "worst_misclassified.png"])


def test_index_lists_runs_and_served_versions_linked_to_their_reports(full_run):
    root, run_dir, _ = full_run
    index = (root / "index.html").read_text()
    assert f'href="runs/{run_dir.name}/report.html"' in index
    assert (root / "runs" / run_dir.name / "report.html").is_file()
    assert re.search(r"<td>1</td><td class=\"text ok\">serving</td>", index)


def test_report_command_rebuilds_and_prints_paths_without_tensorflow(full_run):
    root, run_dir, _ = full_run
    (run_dir / "report.html").unlink()
    probe = ("import sys, runpy; sys.argv = ['pipeline', '--artifacts', sys.argv[1], 'report'];\n"
             "try:\n    runpy.run_module('pipeline', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe, str(root)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    lines = result.stdout.split()
    assert lines[-3:] == [str(run_dir / "report.html"), str(root / "index.html"), "False"], result.stderr
    assert (run_dir / "report.html").is_file()


def test_a_run_stopped_by_validation_still_gets_a_report_saying_why(tmp_path, tfds_dir):
    from pipeline.config import load_config
    from pipeline.graph import DataAnomalies
    from pipeline.runner import run
    from tests.conftest import small_overrides

    cfg = load_config(small_overrides(tfds_dir, **{"validation.min_examples": 10**6}))
    with pytest.raises(DataAnomalies, match="empty_split"):
        run(cfg, tmp_path, components=["ingest", "preprocess", "validate", "train"])
    run_dir = next((tmp_path / "runs").iterdir())
    html = build_report(run_dir).read_text()
    assert "failed: training did not start" in html and "empty_split" in html
    assert "No model was trained in this run" in html
    assert (tmp_path / "index.html").is_file()


HOSTILE = "<img src=x onerror=document.body.prepend(1)>"


def _no_markup_from_outside(html: str) -> None:
    assert HOSTILE not in html and "<img src=x" not in html  # what a browser would have run
    assert "&lt;img src=x onerror=document.body.prepend(1)&gt;" in html


def test_a_hostile_setting_and_path_reach_report_and_index_as_text(tmp_path, tfds_dir):
    from pipeline.config import load_config
    from pipeline.runner import run
    from tests.conftest import small_overrides

    # The split string reaches the error text; the serving root the index's "nothing served" line.
    cfg = load_config(small_overrides(tfds_dir, **{"ingest.train_split": HOSTILE, "export.serving_root": HOSTILE}))
    with pytest.raises(ValueError, match="bad TFDS split"):
        run(cfg, tmp_path)
    run_dir = next((tmp_path / "runs").iterdir())
    _no_markup_from_outside((run_dir / "report.html").read_text())
    _no_markup_from_outside((tmp_path / "index.html").read_text())


def test_every_field_from_outside_is_escaped_in_the_report(full_run, tmp_path):
    import shutil

    root = tmp_path / "artifacts"
    shutil.copytree(full_run[0], root)
    run_dir = root / "runs" / full_run[1].name
    # What evaluate and validate quote from outside: a served path in a warning, a setting in a
    # reason, a stop reason; the report shows them from the manifests, the record of each result.
    def hostile(component, change):
        path = run_dir / component / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest["result"])
        path.write_text(json.dumps(manifest))

    hostile("evaluate", lambda r: r.update(warnings=[f"the served model {HOSTILE} cannot be loaded"],
                                           reasons=[f"a reason {HOSTILE}"]))
    hostile("validate", lambda r: (r.update(reference=HOSTILE), r["checks"][0].update(message=HOSTILE)))
    hostile("train", lambda r: r.update(stop_reason=HOSTILE))
    record = json.loads((run_dir / "run.json").read_text())
    record["error"] = HOSTILE
    record["config"]["train"]["preset"] = HOSTILE
    (run_dir / "run.json").write_text(json.dumps(record))
    html = build_report(run_dir).read_text()
    _no_markup_from_outside(html)
    assert html.count("&lt;img src=x") >= 5


def test_a_cached_run_reuses_the_pictures_of_the_run_that_made_its_outputs(store, full_run, tfds_dir):
    from tests.conftest import small_overrides

    args = [a for kv in small_overrides(tfds_dir) for a in ("--set", kv)]
    probe = ("import sys; from pipeline.__main__ import main; "
             f"code = main(['--artifacts', {str(store)!r}, 'run', *{args!r}]); "
             "print(code, 'matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "0 False", done.stdout + done.stderr  # nothing drawn anew
    cached = max((store / "runs").iterdir())
    for name in ("class_distribution.png", "pixel_distribution.png", "training_curves.png"):
        assert (cached / "report" / name).read_bytes() == (full_run[1] / "report" / name).read_bytes()
    html = (cached / "report.html").read_text()
    assert len(_images(html)) == 6 and 'id="training"' in html
