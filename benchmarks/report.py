"""What every benchmark shares: a plain-text table, JSON naming the machine, and a fresh process to train in."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def cpu_model() -> str:
    """The CPU's marketing name: timings differ 2x between the models this team's machines get."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}


def in_fresh_process(function, *args):
    """`function(*args)` in a new interpreter, its result returned (both picklable), with the
    runner's logging: each training gets TensorFlow's thread pools sized for its own preset, as
    `python -m pipeline` would give it (TensorFlow sizes them once per process, when it starts)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.runner import configure_logging

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=configure_logging) as pool:
        return pool.submit(function, *args).result()


def print_table(rows: list[dict], columns: tuple[str, ...], title: str = "") -> None:
    if title:
        print(f"\n{title}")
    widths = {c: max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(cell(row.get(c, "")).ljust(widths[c]) for c in columns))


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_json(path: Path, benchmark: str, **content) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "benchmark": benchmark, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), **content,
    }, indent=2))
    print(f"\nwritten: {path}")
    return path


def measured(command: list[str]) -> tuple[subprocess.CompletedProcess, float, int]:
    """Runs `command` as a child process; (its result, wall seconds, peak RSS in bytes of its
    process tree, sampled every 50 ms)."""
    import psutil

    # Files, not pipes: a child printing more than a pipe holds would block while we only sample.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started, peak = time.perf_counter(), 0
        child = psutil.Popen(command, stdout=out, stderr=err, text=True)
        while child.poll() is None:
            peak = max(peak, _tree_rss(child))
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, child.returncode, out.read(), err.read()), seconds, peak


def _tree_rss(process) -> int:
    import psutil

    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for member in family:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total
