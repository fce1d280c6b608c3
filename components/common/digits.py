"""Users' own pictures of a digit, made into MNIST form the way MNIST itself was made.

MNIST digits are white on black, anti-aliased, scaled so the longer side of the ink
is 20 px (keeping the aspect ratio) and placed in a 28x28 field with the centre of
mass at the centre. `to_mnist` does that to any greyscale picture; `load_image`
reads a file safely into greyscale.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.ndimage import uniform_filter

FIELD, BOX = 28, 20
MAX_PIXELS = 40_000_000  # ~ a 50-megapixel photo's worth of headroom; beyond it, refuse to decode
MIN_CONTRAST = 32  # ink must differ from the paper by this much (0-255) to count as a digit
PAPER_LEVEL = 0.15  # below this share of the ink's full strength a pixel is paper texture, not ink
CENTRE = 14.0  # where MNIST's centres of mass sit (measured on its test set: 13.99, 14.01)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class ImageError(ValueError):
    """A file that cannot be turned into a digit; the message says why."""


def load_image(path: Path) -> np.ndarray:
    """Greyscale uint8 pixels of an image file, upright, transparency laid on white paper."""
    path = Path(path)
    if not path.exists():
        raise ImageError("no such file")
    if not path.is_file():  # a FIFO or a device would block or never end; a folder is no image
        raise ImageError("not a regular file; name an image file (or a folder of them)")
    if path.stat().st_size == 0:
        raise ImageError("empty file")
    try:
        with Image.open(path) as img:  # reads the header only: size is known before decoding
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"image too large to decode safely ({width}x{height} pixels, limit {MAX_PIXELS}); scale it down"
                )
            img = ImageOps.exif_transpose(img)  # phone photos store their rotation separately
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                paper = Image.new("RGBA", img.size, "white")
                img = Image.alpha_composite(paper, img.convert("RGBA"))
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise ImageError("not an image (no PNG, JPEG or other format PIL can read)") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"image too large to decode safely ({err})") from None
    except (OSError, SyntaxError) as err:  # PIL's words for truncated and corrupt data
        raise ImageError(f"truncated or corrupt image ({err})") from None


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """Any greyscale picture of one digit -> uint8 (28, 28), white on black, MNIST-centred."""
    pixels = np.asarray(gray, dtype=np.float32)
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise ImageError(f"expected a 2-D greyscale image, got shape {pixels.shape}")
    # The paper is what the border mostly shows; ink is whatever differs from it.
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    paper = float(np.median(border))
    ink = paper - pixels if paper > 127 else pixels - paper  # dark-on-light is inverted
    ink = np.clip(ink, 0, None)
    strength = float(uniform_filter(ink, size=3).max())  # the mean over 3x3 ignores lone specks
    if strength < MIN_CONTRAST:
        raise ImageError("blank image: no digit stands out from the background")
    ink = np.clip(ink / strength, 0, 1)
    ink[ink < PAPER_LEVEL] = 0
    rows, cols = np.nonzero(ink)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]

    height, width = ink.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Pillow's bilinear filter widens with the reduction factor: anti-aliased, without ringing.
    small = np.asarray(Image.fromarray(ink * 255).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)

    field = np.zeros((FIELD, FIELD), np.float32)
    weights = small.sum()
    cy = (small.sum(axis=1) @ np.arange(small.shape[0])) / weights
    cx = (small.sum(axis=0) @ np.arange(small.shape[1])) / weights
    top = int(np.clip(round(CENTRE - cy), 0, FIELD - small.shape[0]))
    left = int(np.clip(round(CENTRE - cx), 0, FIELD - small.shape[1]))
    field[top : top + small.shape[0], left : left + small.shape[1]] = small
    return np.round(field).clip(0, 255).astype(np.uint8)


def image_files(paths: list[Path]) -> list[Path]:
    """Files named directly, in order, and the image files inside named folders, sorted."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)
    return found


def labelled_images(folder: Path) -> tuple[list[tuple[Path, int]], list[dict]]:
    """A folder laid out as `<digit>/<any name>.<image suffix>`: (path, label) for each image
    file, and `{path, reason}` for everything else found there, which the caller reports.
    A symbolic link (a digit folder or a file) is followed only when it points inside `folder`:
    one pointing out would train on whatever it names. Links to folders inside a digit folder
    are not followed."""
    folder = Path(folder)
    root = folder.resolve()
    found, skipped = [], []

    def skip(path: Path, reason: str) -> None:
        skipped.append({"path": str(path), "reason": reason})

    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.resolve().is_relative_to(root):
            skip(entry, "a symbolic link to outside the folder (not followed)")
        elif not entry.is_dir():
            skip(entry, "not inside a digit folder (0-9)")
        elif not (len(entry.name) == 1 and entry.name.isdigit()):
            skip(entry, f"folder {entry.name!r} is not a digit 0-9")
        else:
            for path in sorted(p for p in entry.rglob("*") if not p.name.startswith(".")):
                if path.is_symlink() and not path.resolve().is_relative_to(root):
                    skip(path, "a symbolic link to outside the folder (not followed)")
                elif path.is_symlink() and path.is_dir():
                    skip(path, "a symbolic link to a folder inside a digit folder (not followed)")
                elif not path.is_file():
                    continue
                elif path.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((path, int(entry.name)))
                else:
                    skip(path, f"not an image file ({path.suffix or 'no suffix'})")
    return found, skipped
