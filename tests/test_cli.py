"""The command line as an operator meets it: exit status and one-line errors."""
import re
import subprocess
import sys

from conftest import REPO, small_overrides


def pipeline(*args):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def error_line(result):
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bad_configuration_value_exits_nonzero_with_one_line(tmp_path):
    result = pipeline("--artifacts", tmp_path, "run", "--set", "train.epochs=-1")
    assert result.returncode != 0
    assert "train.epochs=-1" in error_line(result)
    assert not (tmp_path / "runs").exists()  # nothing started


def test_component_without_upstream_names_what_to_run_first(tmp_path):
    result = pipeline("run", "train", "--artifacts", tmp_path)  # --artifacts after the sub-command works too
    assert result.returncode != 0
    line = error_line(result)
    assert "preprocess" in line and "python -m pipeline run ingest" in line


def test_missing_mirror_file_is_named(tmp_path, mirror, tfds_dir):
    partial = tmp_path / "mirror"
    partial.mkdir()
    for f in mirror.glob("*.gz"):
        if not f.name.startswith("t10k-labels"):
            (partial / f.name).symlink_to(f)
    fresh_tfds = tmp_path / "tfds"  # unprepared: TFDS must look for the files
    overrides = small_overrides(fresh_tfds, **{"ingest.manual_dir": partial})
    result = pipeline("--artifacts", tmp_path / "a", "run", "ingest", *[a for o in overrides for a in ("--set", o)])
    assert result.returncode != 0
    line = error_line(result)
    assert "t10k-labels-idx1-ubyte.gz" in line and "missing" in line
    run_dirs = list((tmp_path / "a" / "runs").iterdir())
    assert [p.name for p in run_dirs[0].iterdir() if not p.name.startswith(("run.", "report"))] == []  # no half artifact


def test_commands_that_need_no_model_never_import_tensorflow(tmp_path):
    probe = (
        "import sys; from pipeline.__main__ import main; "
        f"codes = [main(['--artifacts', {str(tmp_path)!r}, c]) for c in ('models', 'presets')]; "
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'apache_beam', 'tensorflow_datasets') if m in sys.modules); "
        "print(codes, heavy)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[0, 0] []", result.stdout + result.stderr
    assert "seed-004" in result.stdout and "no served versions" in result.stdout


def test_tensorflow_start_up_chatter_stays_off_the_console_and_our_log_lines_do_not(tmp_path, tfds_dir):
    sets = [a for kv in small_overrides(tfds_dir) for a in ("--set", kv)]
    result = pipeline("--artifacts", tmp_path, "run", "ingest", *sets)
    assert result.returncode == 0, result.stderr
    assert "ingest succeeded" in result.stderr
    for chatter in ("I0000", "E0000", "cuInit", "absl::InitializeLog", "oneDNN custom operations"):
        assert chatter not in result.stderr
    debug = pipeline("--artifacts", tmp_path, "--debug", "run", "ingest", *sets)
    assert "I0000" in debug.stderr  # --debug shows what TensorFlow says: the filter is what hides it


def test_gpu_errors_are_dropped_only_where_no_nvidia_driver_is_loaded():
    from pipeline.console import chatter

    cu_init = (b"E0000 00:00:1795368295.609881   10538 cuda_platform.cc:52] failed call to cuInit: "
               b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
    one_dnn = b"I0000 00:00:1795368289.935519   10538 port.cc:153] oneDNN custom operations are on.\n"
    other_error = b"E0000 00:00:1795368295.609881   10538 op_kernel.cc:1857] OP_REQUIRES failed\n"
    assert chatter(nvidia_driver=False).match(cu_init)  # no GPU here: TensorFlow's probe failing is noise
    assert not chatter(nvidia_driver=True).match(cu_init)  # a driver but no cuInit: why the GPU goes unused
    assert chatter(nvidia_driver=True).match(one_dnn) and chatter(nvidia_driver=False).match(one_dnn)
    assert not chatter(nvidia_driver=False).match(other_error)


FORGED = "x\n2026-12-05 19:40:00,000 INFO pipeline: FORGED pushed version 99.txt"
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ")


def test_a_file_name_cannot_forge_a_log_line_or_drive_the_terminal(tmp_path, tfds_dir):
    extra = tmp_path / "extra"
    (extra / "3").mkdir(parents=True)
    (extra / "3" / FORGED).write_text("not an image")
    (extra / "3" / "\x1b[2J\x1b[31mred.png").write_text("not an image either")
    sets = [a for kv in small_overrides(tfds_dir, **{"ingest.extra_dir": extra}) for a in ("--set", kv)]
    result = pipeline("--artifacts", tmp_path / "a", "run", "ingest", *sets)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "a" / "runs").iterdir()
    run_log = (run_dir / "run.log").read_text()
    for text in (run_log, result.stderr):
        assert "\x1b" not in text
        assert not any(line.startswith("2026-12-05 19:40:00,000") for line in text.splitlines())
    assert all(STAMP.match(line) for line in run_log.splitlines()), run_log
    [warning] = [line for line in run_log.splitlines() if "FORGED" in line]
    assert STAMP.match(warning)  # the whole name inside the one line of its event
    assert "extra image skipped: " in warning and r"x\n2026-12-05 19:40:00,000 INFO pipeline: FORGED" in warning
    assert r"\x1b[2J\x1b[31mred.png" in run_log
