"""`python -m pipeline predict`: classify users' image files with a served SavedModel."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from components import serving
from components.common.digits import ImageError, image_files, load_image, to_mnist
from pipeline.console import printable


def resolve_model(model: str | None, model_base: Path) -> Path:
    """A served version (`3` or `v3`), a SavedModel directory, or (None or `current`) the current served version."""
    model = None if model == "current" else model[1:] if model and model[:1] in "vV" and model[1:].isdigit() else model
    if model and not model.isdigit():
        path = Path(model)
        if not (path / "saved_model.pb").is_file():
            raise FileNotFoundError(f"--model {model} is not a SavedModel directory (no saved_model.pb)")
        return path
    version = int(model) if model else serving.current_version(model_base)
    if version is None:
        raise FileNotFoundError(f"no served model under {model_base}; run the pipeline first or pass --model DIR")
    if version not in serving.versions(model_base):
        raise FileNotFoundError(f"no version {version} under {model_base}; choose one of {serving.versions(model_base)}")
    return model_base / str(version)


def predict_files(paths: list[Path], saved_model: Path, as_json: bool = False) -> int:
    """Print one line per image; bad files get an error line and the rest go on. Returns the failure count."""
    from components.serving.client import predict_saved_model

    files = image_files(paths)
    digits, good, failures = [], [], 0
    for path in files:
        try:
            digits.append(to_mnist(load_image(path)))
            good.append(path)
        except ImageError as error:
            print(f"error: {printable(path)}: {printable(error)}", file=sys.stderr)
            failures += 1
    if good:
        probabilities = predict_saved_model(saved_model, np.stack(digits))
        for path, p in zip(good, probabilities):
            digit = int(p.argmax())
            if as_json:
                print(json.dumps({"path": str(path), "digit": digit, "probability": float(p[digit]),
                                  "probabilities": [float(x) for x in p]}))
            else:
                print(f"{printable(path)}: {digit} (p={p[digit]:.3f})")  # a name is one line, whatever it holds
    if not files:
        print(f"error: no image files in {printable(', '.join(map(str, paths)))}", file=sys.stderr)
        failures += 1
    return failures
