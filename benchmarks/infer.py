"""Batch inference against `predict` on the same users' photos: images/s and peak memory.

    python -m benchmarks.infer [--sizes 1000,10000] [--model VERSION|DIR] [--artifacts DIR]

MNIST test digits rendered as users photograph them (`benchmarks.user_images`), written
once per size to `<artifacts>/benchmarks/infer/data/<n>/`; then, each in its own process
as a user would start it, `python -m pipeline infer` (the Beam job) and `python -m
pipeline predict` (one process, every image in memory) over the same folder with the same
served model. Wall seconds include start-up; peak memory is the RSS of the process tree.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.report import measured, print_table, write_json

COLUMNS = ("images", "way", "seconds", "images_per_s", "peak_mb")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.infer", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="images per folder, comma-separated")
    parser.add_argument("--model", default="current", help="served version or SavedModel directory")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="the artifacts root that serves it")
    args = parser.parse_args(argv)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        folder = photos(args.artifacts / "benchmarks" / "infer" / "data" / str(size), size, args.artifacts)
        for way, command in (("infer (Beam)", ["infer", str(folder)]), ("predict", ["predict", str(folder)])):
            result, seconds, peak = measured([sys.executable, "-m", "pipeline", "--artifacts", str(args.artifacts),
                                              *command, "--model", args.model])
            if result.returncode:
                raise SystemExit(f"error: {way} failed: {result.stderr.strip().splitlines()[-1:]}")
            rows.append({"images": size, "way": way, "seconds": round(seconds, 2),
                         "images_per_s": round(size / seconds, 1), "peak_mb": round(peak / 2**20)})
            print_table(rows[-1:], COLUMNS)
    print_table(rows, COLUMNS, title="infer against predict")
    write_json(args.artifacts / "benchmarks" / "infer" / "infer.json", "infer", model=args.model, rows=rows)
    return 0


def photos(folder: Path, count: int, artifacts: Path) -> Path:
    """`count` test digits of the newest ingest output as users' JPEG photos, made once."""
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    import numpy as np

    from benchmarks.user_images import render_like_a_user
    from components.common.records import iter_examples
    from pipeline.store import ArtifactStore

    latest = ArtifactStore(artifacts).latest("ingest")
    if latest is None:
        raise SystemExit(f"error: no ingest output under {artifacts}; run the pipeline first (make pipeline)")
    folder.mkdir(parents=True, exist_ok=True)
    rng, written = np.random.default_rng(0), 0
    while written < count:  # the test split again from its start if it holds fewer
        for images, _ in iter_examples(latest.path, "test"):
            for digit in images[: count - written]:
                render_like_a_user(digit, rng).save(folder / f"{written:06d}.jpg", quality=90)
                written += 1
            if written == count:
                break
    return folder


if __name__ == "__main__":
    raise SystemExit(main())
