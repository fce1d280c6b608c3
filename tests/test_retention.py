"""Retention decides from the store's own records: runs, manifests, push records."""
import json

from pipeline import retention


def _run(root, run_id, uses=None, reused=None):
    """A run directory as the runner leaves it: run.json, and manifests naming their inputs."""
    run_dir = root / "runs" / run_id
    run_dir.mkdir(parents=True)
    components = {}
    for component in ("ingest", "preprocess", "train"):
        if reused and component in reused:
            components[component] = {"status": "cached", "reused": str(root / "runs" / reused[component] / component)}
            continue
        (run_dir / component).mkdir()
        inputs = {"input": str(root / "runs" / uses / "ingest")} if uses and component == "preprocess" else {}
        (run_dir / component / "manifest.json").write_text(json.dumps({"fingerprint": f"{run_id}-{component}",
                                                                        "inputs": inputs}))
        components[component] = {"status": "succeeded"}
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_id, "components": components}))
    return run_dir


def _version(base, number, run_id, replaces):
    version = base / str(number)
    (version / "assets.extra").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"\x08\x01")
    (version / "assets.extra" / "push.json").write_text(json.dumps({"run": run_id, "replaces": replaces}))


def test_retention_keeps_recent_served_and_reused_and_sweeps_scratch(tmp_path):
    root, base = tmp_path, tmp_path / "serving" / "mnist"
    _run(root, "r1")
    _run(root, "r2")
    _run(root, "r3", uses="r1")  # its preprocess read r1's ingest
    _run(root, "r4")
    _run(root, "r5")
    (root / "runs" / "r5" / ".train-killed").mkdir()  # scratch of a killed process
    _run(root, "r6", reused={"ingest": "r3", "preprocess": "r3"})  # cache hits on r3
    _version(base, 1, "r2", None)
    _version(base, 2, "r4", 1)
    _version(base, 3, "r6", 2)
    (base / ".staging-x").mkdir()
    (root / "backups" / "r6-train").mkdir(parents=True)  # its training finished: not needed
    (root / "backups" / "unfinished").mkdir()  # a training still to resume

    found = retention.plan(root, base, keep_runs=2, keep_versions=1)
    assert sorted(p.name for p in found.runs) == ["r2"]  # r1, r3: used by r6; r4: behind version 2
    assert [p.name for p in found.versions] == ["1"]  # 3 is current, 2 what it replaced
    assert sorted(p.name for p in found.scratch) == [".staging-x", ".train-killed", "r6-train"]

    retention.apply(found)
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["r1", "r3", "r4", "r5", "r6"]
    assert sorted(p.name for p in base.iterdir()) == ["2", "3"]
    assert sorted(p.name for p in (root / "backups").iterdir()) == ["unfinished"]
    assert not retention.plan(root, base, keep_runs=2, keep_versions=1).paths()  # nothing more to do
    for manifest in (root / "runs").glob("*/*/manifest.json"):  # no kept artifact points at a deleted one
        for path in json.loads(manifest.read_text())["inputs"].values():
            assert (root / "runs").joinpath(*path.split("/runs/")[1:]).is_dir()


def test_active_runs_and_their_scratch_are_never_touched(tmp_path):
    _run(tmp_path, "r1")
    (tmp_path / "runs" / "r1" / ".train-in-progress").mkdir()
    found = retention.plan(tmp_path, tmp_path / "serving" / "mnist", keep_runs=0, keep_versions=0, active={"r1"})
    assert found.paths() == []


def test_runs_behind_versions_pushed_to_another_serving_root_are_kept_and_named(tmp_path, capsys):
    from pipeline.__main__ import main

    root = tmp_path
    for run_id, serving_root in (("r1", "elsewhere"), ("r2", ""), ("r3", "")):
        run_dir = _run(root, run_id)
        record = json.loads((run_dir / "run.json").read_text())
        record["config"] = {"export": {"serving_root": serving_root, "model_name": "mnist"}}
        (run_dir / "run.json").write_text(json.dumps(record))
    _version(root / "elsewhere" / "mnist", 1, "r1", None)  # r1 ran with --set export.serving_root=elsewhere

    # Without that setting: r1 is past keep_runs=1, but the version it pushed still serves.
    assert main(["--artifacts", str(root), "gc", "--dry-run", "--set", "retention.keep_runs=1"]) == 0
    planned = capsys.readouterr().out.splitlines()
    size = sum(p.stat().st_size for p in (root / "runs" / "r2").rglob("*") if p.is_file())
    assert planned == [f"would delete {root / 'runs' / 'r2'} ({size} B): older than the last 1 run(s) "
                       f"(retention.keep_runs), and no kept run or served version uses it", f"1 to delete, {size} B"]
    assert main(["--artifacts", str(root), "models"]) == 0
    assert (f"also served: 1 version(s) under {root / 'elsewhere' / 'mnist'}; list them with "
            f"--set export.serving_root={root / 'elsewhere'} --set export.model_name=mnist") in capsys.readouterr().out
    assert main(["--artifacts", str(root), "rollback"]) == 1
    assert f"roll back there with --set export.serving_root={root / 'elsewhere'}" in capsys.readouterr().err
