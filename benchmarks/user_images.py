"""How well the served model reads MNIST test digits re-rendered as users' pictures.

    python -m benchmarks.user_images [--count 500] [--model VERSION|DIR]

Each digit is scaled up, inverted to dark ink on light paper, shifted off-centre,
tinted and saved as an RGB JPEG, then read back through the functions `predict`
uses (`load_image`, `to_mnist`). The table compares that accuracy with the same
digits fed raw.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def render_like_a_user(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An MNIST digit as people have them: bigger, dark ink on light paper, off-centre, in colour."""
    scale = int(rng.integers(3, 7))
    big = Image.fromarray(255 - digit).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)
    paper = Image.new("L", (28 * scale + 120, 28 * scale + 80), 235)
    paper.paste(big, (int(rng.integers(0, 120)), int(rng.integers(0, 80))))
    ink = np.asarray(paper, dtype=np.float32) / 255
    rgb = np.stack([ink * 255, ink * 240 + 10, ink * 200 + 30], axis=-1)  # bluish ink, warm paper
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def main(argv: list[str] | None = None) -> int:
    from components.common.digits import load_image, to_mnist
    from components.common.records import read_examples
    from components.serving.client import predict_saved_model
    from pipeline.config import load_config
    from pipeline.predict import resolve_model
    from pipeline.runner import model_base
    from pipeline.store import ArtifactStore

    parser = argparse.ArgumentParser(prog="python -m benchmarks.user_images", description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--model", help="served version or SavedModel directory (default: current version)")
    args = parser.parse_args(argv)

    cfg = load_config()
    model = resolve_model(args.model, model_base(cfg, args.artifacts))
    latest_ingest = ArtifactStore(args.artifacts).latest("ingest")
    if latest_ingest is None:
        raise SystemExit("error: no ingest output under --artifacts; run the pipeline first")
    images, labels = read_examples(latest_ingest.path, "test")
    images, labels = images[: args.count], labels[: args.count]

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        rendered = []
        for i, digit in enumerate(images):
            path = Path(folder) / f"{i:05d}.jpg"
            render_like_a_user(digit, rng).save(path, quality=90)
            rendered.append(to_mnist(load_image(path)))
    raw = float((predict_saved_model(model, images).argmax(1) == labels).mean())
    user = float((predict_saved_model(model, np.stack(rendered)).argmax(1) == labels).mean())
    result = {"model": str(model), "images": len(labels), "raw_accuracy": raw, "user_image_accuracy": user}
    print(f"{'model':40}  {'images':>6}  {'raw acc':>7}  {'user-image acc':>14}")
    print(f"{str(model):40}  {len(labels):>6}  {raw:>7.4f}  {user:>14.4f}")
    out = args.artifacts / "benchmarks" / "user_images.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
